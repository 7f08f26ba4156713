#!/usr/bin/env bash
# The GPU figures in one command (needs a CUDA device and the project's environment):
#   bash benchmarks/gpu.sh [VENV]
# Prints the upstream loop vs the batched matcher (fp32, mixed precision, mixed + torch.compile) at
# 2048 keypoints (and 512/1024), each also with the opt-in screening 2/10, the ratio, score parity and
# the full-depth FLOP rate.
set -euo pipefail
PY="${1:-.venv}/bin/python"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
"$PY" benchmarks/bench_match.py --device cuda --keypoints 2048 1024 512 --pairs 200 400 800 --screen 2 10
