#!/usr/bin/env bash
# Scores and rankings of two checkouts on the same real photos: evaluate (exhaustive and two-stage) and identify
# (three queries, both modes), each checkout with its own feature store, then a field-by-field comparison.
# Usage: benchmarks/parity.sh OLD_CHECKOUT NEW_CHECKOUT [OUT]     (needs ../shared/data/nyala)
set -euo pipefail
OLD=$(cd "$1" && pwd); NEW=$(cd "$2" && pwd); OUT=${3:-/tmp/parity}
DATA=$(cd "$(dirname "$0")/../../shared/data/nyala" && pwd)
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
SETTINGS=(--keypoints 256 --image-size 320 --device cpu -q)
QUERIES=(images/100/124_leftphoto.jpg images/101/125_leftphoto.jpg images/102/126_rightphoto.jpg)
rm -rf "$OUT"; mkdir -p "$OUT"
head -1 "$DATA/labels.csv" > "$OUT/subset.csv"
grep -E '^images/10[0-5]/' "$DATA/labels.csv" | sed "s|^|$DATA/|" >> "$OUT/subset.csv"
for side in old new; do
  root=$([ $side = old ] && echo "$OLD" || echo "$NEW")
  run() { (cd "$root" && PYTHONPATH="$root" "$PY" -c "import sys; from wbia_lightglue.cli import main; sys.exit(main())" "$@" "${SETTINGS[@]}" --cache-dir "$OUT/$side/store"); }
  for k in 0 5; do
    run evaluate "$OUT/subset.csv" --group-by side --report-queries 0 --shortlist $k --output "$OUT/$side/eval-$k" >/dev/null
    for q in "${QUERIES[@]}"; do
      run identify "$DATA/$q" "$OUT/subset.csv" --shortlist $k --top 1000 --json "$OUT/$side/id-$k-$(basename "$q" .jpg).json" >/dev/null
    done
  done
done
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); bad = 0
for old in sorted((out / "old").rglob("*.json")):
    new = out / "new" / old.relative_to(out / "old")
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    if "queries" in a:  # report.json: every query's row, and the summary
        same = a["queries"] == b["queries"] and a["cmc"] == b["cmc"] and a["mean_average_precision"] == b["mean_average_precision"]
        what = f"{len(a['queries'])} queries, rank-1 {a['cmc'].get('1')}"
    else:  # identify --json: every candidate row (rank, individual, annotation, score; fields added later ignored)
        fields = ("rank", "individual", "annotation", "score")
        same = [[c[f] for f in fields] for c in a["candidates"]] == [[c[f] for f in fields] for c in b["candidates"]]
        what = f"{len(a['candidates'])} individuals ranked"
    bad += not same
    print(("identical " if same else "DIFFERENT ") + str(old.relative_to(out / "old")) + f" ({what})")
print("parity: all identical" if not bad else f"parity: {bad} file(s) differ"); sys.exit(1 if bad else 0)
PY
