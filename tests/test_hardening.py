"""Hardening against bad files, bad rows and faults (issue 11): each class ends in a skipped item with a
warning naming it, a one-line error before any expensive work, or a retry; nothing computed is lost.

The WBIA web routes' share is in test_plugin_wbia.py (it needs the real database fixture).
"""
import json
import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wbia_lightglue import cli, core
from wbia_lightglue.core import ConfigError, load_config
from wbia_lightglue.evaluation import calibration

ROOT = Path(__file__).resolve().parents[1]
TINY = {"max_num_keypoints": 128, "image_size": 256, "device": "cpu"}


def tiny_config(**changes):
    return core.Config({**TINY, **changes})


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wbia-lightglue: error: "), err
    return lines[0]


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def finishes(fn, seconds: float = 20):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned in time."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn} still running after {seconds} s (blocked?)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def fake_extract(chips, config, keys=None, **kwargs):
    """Deterministic stand-in for ALIKED where only the store's bookkeeping is under test."""
    out = []
    for chip in chips:
        n = int(chip.mean()) % 7 + 3
        out.append({"keypoints": np.full((n, 2), 1.5, np.float32), "descriptors": np.ones((n, 128), np.float32),
                    "keypoint_scores": np.ones(n, np.float32), "image_size": np.asarray(chip.shape[1::-1], np.int64),
                    "fingerprint": config.feature_fingerprint})
    return out

# ============================================================================ config and calibration files
@pytest.mark.parametrize("text, needles", [
    ('{"screen_score": NaN}', ["'screen_score'", "finite number", "nan"]),
    ('{"screen_score": Infinity}', ["'screen_score'", "finite number", "inf"]),
    ('{"filter_threshold": 1e400}', ["'filter_threshold'", "finite number"]),
    ('{"depth_confidence": -Infinity}', ["'depth_confidence'", "finite number"]),
    ('{"batch_memory_mb": 1' + "0" * 5000 + "}", ["not a usable config", "digits"]),
    ('{"feature_cache_max_bytes": 1' + "0" * 30 + "}", ["'feature_cache_max_bytes'", "0..2**50"]),
    ('{"image_size": 256, "image_size": 512}', ["key 'image_size' appears twice"]),
    ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    ('{"device": "cuda:x"}', ["'device'", "'cuda:x'"]),
    ('{"device": "cuda:-1"}', ["'device'", "'cuda:-1'"]),
    ('{"device": "cuda:\u2460"}', ["'device'", "cuda:\u2460"]),
    ('{"device": "cuda:\u0663"}', ["'device'"]),
    ('{"device": "cuda:0 "}', ["'device'"]),
    ('{"device": "cuda:99999"}', ["'device'"]),
    ('{"' + "k" * 5000 + '": 1}', ["unknown key 'kkkk", "...", "valid keys"]),
])
def test_bad_config_files_are_one_line_errors_naming_the_key(tmp_path, capsys, text, needles):
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600 and str(path) in message
    for needle in needles:
        assert needle in message, (needle, message)
    code, _, err = run_cli(capsys, "extract", tmp_path, "--config", path)
    assert code == 2 and needles[0] in one_error_line(err)


def test_config_files_that_are_not_json_text(tmp_path, capsys):
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe{\x00\x00garbage\x80")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (2 << 20) + b"{}")
    cases = {binary: "is not UTF-8 text", huge: "a config is at most",
             fifo(tmp_path / "pipe.json"): "not a regular file", Path("/dev/zero"): "not a regular file",
             tmp_path / ("x" * 300): "File name too long"}
    for path, needle in cases.items():
        with pytest.raises(ConfigError, match=needle):
            finishes(lambda path=path: load_config(path))
        code, _, err = finishes(lambda path=path: run_cli(capsys, "extract", tmp_path, "--config", path))
        assert code == 2 and needle in one_error_line(err)
    with_bom = tmp_path / "bom.json"
    with_bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image_size": 320}).encode())
    assert load_config(with_bom)["image_size"] == 320


def test_non_finite_values_cannot_enter_a_config_and_it_always_serialises_to_json():
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ConfigError, match="'screen_score' must be a finite number"):
            core.Config({"screen_score": value})
    json.dumps(core.Config({}).to_dict(), allow_nan=False)  # what /config/ returns: strict JSON


def test_device_index_beyond_the_machine(monkeypatch):
    from wbia_lightglue.engine import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="'cuda:2' was requested but this machine has 2 CUDA device"):
        models.resolve_device(tiny_config(device="cuda:2"))
    assert str(models.resolve_device(tiny_config(device="cuda:1"))) == "cuda:1"


def valid_calibration(config):
    return {"version": 1, "x": [0.0, 5.0, 20.0], "p": [0.0, 0.3, 0.9], "match_fingerprint": config.match_fingerprint,
            "score": "confidence_sum", "method": "isotonic"}


@pytest.mark.parametrize("name, content", [
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe"),
    ("empty", b""),
    ("ragged", {"x": [[0.0, 1.0], [2.0]], "p": [0.1, 0.2]}),
    ("string knots", {"x": ["0", "5", "20"]}),
    ("string probabilities", {"p": ["low", "mid", "high"]}),
    ("NaN probabilities", {"p": [0.0, float("nan"), 0.9]}),
    ("Infinity knot", {"x": [0.0, 5.0, float("inf")]}),
    ("boolean knots", {"x": [False, True, True]}),
    ("uneven lengths", {"p": [0.1, 0.2]}),
    ("decreasing", {"p": [0.9, 0.3, 0.0]}),
    ("out of range", {"p": [0.0, 0.5, 1.5]}),
    ("not an object", [1, 2, 3]),
    ("wrong version", {"version": 7}),
    ("unknown field", {"colour": "blue"}),
    ("nested", "[" * 100_000 + "]" * 100_000),
    ("fingerprint not a string", {"match_fingerprint": 12}),
])
def test_unusable_calibration_files_are_ignored_with_a_warning(tmp_path, caplog, name, content):
    config = tiny_config()
    path = tmp_path / "c.calibration.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        body = content if isinstance(content, list) else {**valid_calibration(config), **content}
        path.write_text(json.dumps(body))  # json writes NaN / Infinity, as Python's json reads them
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        assert calibration.load_calibration(config, path) is None
    assert "c.calibration.json is unusable" in caplog.text and "\n" not in caplog.records[-1].getMessage()
    path.write_text(json.dumps(valid_calibration(config)))
    assert calibration.load_calibration(config, path).probability(5.0) == pytest.approx(0.3)


def test_calibration_path_that_is_a_fifo_or_folder_is_ignored(tmp_path, caplog):
    config = tiny_config()
    for path in (fifo(tmp_path / "pipe.json"), tmp_path):
        with caplog.at_level(logging.WARNING, "wbia_lightglue"):
            assert finishes(lambda path=path: calibration.load_calibration(config, path)) is None
        assert "not a regular file" in caplog.text
