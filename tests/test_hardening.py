"""Hardening against bad files, bad rows and faults (issue 11): each class ends in a skipped item with a
warning naming it, a one-line error before any expensive work, or a retry; nothing computed is lost.

The WBIA web routes' share is in test_plugin_wbia.py (it needs the real database fixture).
"""
import errno
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from cli_runner import one_error_line, run_cli
from images import textured_chip, warp

from wbia_lightglue import core
from wbia_lightglue.core import ConfigError, load_config
from wbia_lightglue.data import dataset as dataset_module
from wbia_lightglue.data import images, store
from wbia_lightglue.data.dataset import DatasetError, load_dataset, natural_key
from wbia_lightglue.data.images import ImageReadError, decode_image, read_image_bytes
from wbia_lightglue.data.store import FeatureStore, content_key
from wbia_lightglue.engine import calibration, extraction, memory
from wbia_lightglue.engine.cache import FeatureCache
from wbia_lightglue.engine.device import OutOfDeviceMemory
from wbia_lightglue.engine.match_types import MatchSettings
from wbia_lightglue.engine.matcher import BatchedLightGlue
from wbia_lightglue.engine.models import get_lightglue
from wbia_lightglue.files import check_writable_dir, read_regular_file

ROOT = Path(__file__).resolve().parents[1]
TINY = {"max_num_keypoints": 128, "image_size": 256, "device": "cpu"}


def tiny_config(**changes):
    return core.Config({**TINY, **changes})


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


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
    # one line, the huge key cut short (the list of valid keys alone is ~600 characters since two-stage's keys)
    assert "\n" not in message and len(message) < 1000 and str(path) in message
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
    return {"version": 1, "x": [0.0, 5.0, 20.0], "p": [0.0, 0.3, 0.9],
            "match_fingerprint": config.pair_score_fingerprint, "score": "confidence_sum", "method": "isotonic"}


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

# ============================================================================ image files
def png_bytes(width: int, height: int, rows: bytes = b"", depth: int = 8, colour: int = 0) -> bytes:
    """A PNG with the given header; ``rows`` is the raw scanline data to compress (a bomb: all zeros)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return head + chunk(b"IDAT", zlib.compress(rows or b"\x00" * 64)) + chunk(b"IEND", b"")


def zero_png_bomb(side: int) -> bytes:
    """A grey PNG of side x side pixels whose file is tiny: its rows are zeros, compressed streaming."""
    comp, parts, row = zlib.compressobj(9), [], b"\x00" * (side + 1)
    for _ in range(side):
        parts.append(comp.compress(row))
    parts.append(comp.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header is rewritten to claim width x height (decodes to that size)."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("data, size", [
    (png_bytes(40000, 40000), "40000x40000"),  # above OpenCV's 2**30: cv2.error escaped before
    (jpeg_claiming(30000, 30000), "30000x30000"),  # 600 bytes that OpenCV decodes to 2.7 GB
    (zero_png_bomb(13000), "13000x13000"),  # a real 170 KB bomb of 169 megapixels
])
def test_pixel_budget_is_checked_from_the_header_before_decoding(monkeypatch, data, size):
    assert len(data) < 200_000
    decoded = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1) or real(*a))
    with pytest.raises(ImageReadError, match=rf"bomb.png is {size} \([\d,.]+ megapixels\), above the pixel budget"):
        decode_image(data, "bomb.png")
    assert decoded == []  # refused from the header: never decoded


def test_pixel_budget_is_configurable_and_skips_with_a_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(store, "extract_features", fake_extract)
    small = write_png(tmp_path / "small.png", textured_chip(1, (60, 80)))
    large = write_png(tmp_path / "large.png", textured_chip(2, (120, 160)))
    assert decode_image(large.read_bytes(), large).shape == (120, 160, 3)  # default budget: fine
    with pytest.raises(ImageReadError, match=r"160x120 \(19,200 pixels\), above the pixel budget of 10,000 pixels"):
        decode_image(large.read_bytes(), large, max_pixels=10_000)
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        feats, _, report = FeatureStore(tmp_path / "store").features(
            [(small, None), (large, None)], tiny_config(max_image_pixels=10_000), progress=False)
    assert feats[0] is not None and feats[1] is None and report.extracted == 1
    assert "large.png" in caplog.text and "pixel budget" in caplog.text
    with pytest.raises(ConfigError, match="max_image_pixels"):
        tiny_config(max_image_pixels=(1 << 30) + 1)  # above what OpenCV can decode at all


def test_opencv_errors_never_escape(monkeypatch):
    good = cv2.imencode(".png", textured_chip(3, (40, 40)))[1].tobytes()

    def broken(*args):
        raise cv2.error("OpenCV(4.7.0) loadsave.cpp:79: error: (-215:Assertion failed) in 'validateInputImageSize'")

    monkeypatch.setattr(cv2, "imdecode", broken)
    with pytest.raises(ImageReadError, match=r"x.png cannot be decoded \(.*validateInputImageSize"):
        decode_image(good, "x.png")


def test_16_bit_palette_grey_and_alpha_images_decode_to_8_bit_bgr():
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    for suffix in (".png", ".tiff"):
        out = decode_image(cv2.imencode(suffix, deep)[1].tobytes(), f"deep{suffix}")
        assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
        assert np.abs(out.astype(int) - (deep >> 8)).max() <= 1  # scaled to 8 bits, not clipped
    grey16 = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    assert decode_image(cv2.imencode(".png", grey16)[1].tobytes(), "g.png").shape == (30, 40, 3)
    from PIL import Image

    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for mode in ("P", "L", "RGBA", "LA"):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, "PNG")
        out = decode_image(buf.getvalue(), f"{mode}.png")
        assert out.dtype == np.uint8 and out.shape == (30, 40, 3), mode


def test_truncated_files_are_refused_and_trailing_data_is_not():
    jpeg = cv2.imencode(".jpg", textured_chip(4, (64, 80)))[1].tobytes()
    for cut in (len(jpeg) // 3, len(jpeg) - 2):  # OpenCV would decode these half grey without a word
        with pytest.raises(ImageReadError, match="truncated JPEG"):
            decode_image(jpeg[:cut], "cut.jpg")
    for cut in (10, 100):  # cut inside the headers: no image at all
        with pytest.raises(ImageReadError, match="cut.jpg"):
            decode_image(jpeg[:cut], "cut.jpg")
    png = cv2.imencode(".png", textured_chip(4, (64, 80)))[1].tobytes()
    with pytest.raises(ImageReadError, match="cut.png is not a readable image"):
        decode_image(png[:len(png) // 2], "cut.png")
    # a camera trailer or a second picture after the end marker keeps the image usable
    assert decode_image(jpeg + b"\xff\xda trailer junk" * 50, "trailer.jpg").shape == (64, 80, 3)


def test_exif_orientation_is_applied_and_bboxes_refer_to_the_displayed_frame():
    from PIL import Image

    stored = np.zeros((40, 60, 3), np.uint8)  # as the sensor stored it: 60 wide, 40 high
    stored[:20, :30] = (255, 0, 0)  # top-left quarter red (RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    shown = decode_image(buf.getvalue(), "rotated.jpg")
    assert shown.shape == (60, 40, 3)  # displayed: 40 wide, 60 high
    # after a clockwise quarter turn the red quarter is at the top right of the displayed image
    top_right = decode_image(buf.getvalue(), "rotated.jpg", bbox=(25, 2, 12, 25))
    assert top_right[..., 2].mean() > 200 and top_right[..., 1].mean() < 60  # BGR: red


def test_only_regular_files_are_read(tmp_path, monkeypatch):
    pipe = fifo(tmp_path / "pipe.jpg")
    for path in (pipe, Path("/dev/zero"), tmp_path):
        with pytest.raises(ImageReadError, match=f"image {path} cannot be read"):
            finishes(lambda path=path: read_image_bytes(path))  # a FIFO blocked, /dev/zero filled memory
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 5000)
    monkeypatch.setattr(images, "MAX_IMAGE_FILE_BYTES", 4096)
    with pytest.raises(ImageReadError, match="5,000 bytes; the limit is 4,096"):
        read_image_bytes(big)
    with pytest.raises(OSError, match="not a regular file"):
        finishes(lambda: read_regular_file(pipe, 100))

# ============================================================================ CSV datasets
def csv_dataset(tmp_path: Path, body: str, images_=("a.png", "b.png", "c.png"), encoding="utf-8") -> Path:
    for k, name in enumerate(images_):
        write_png(tmp_path / name, textured_chip(10 + k, (64, 64)))
    path = tmp_path / "labels.csv"
    path.write_bytes(body.encode(encoding))
    return path


def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    path = csv_dataset(tmp_path, "path,individual\na.png,x\nb.png,y\n", encoding="utf-8-sig")  # Excel's CSV
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    data = load_dataset(path)
    assert [a.path.name for a in data.annotations] == ["a.png", "b.png"]


def test_dataset_that_is_a_fifo_or_device_is_refused_at_once(tmp_path, capsys):
    pipe = fifo(tmp_path / "labels.csv")
    for source in (pipe, Path("/dev/zero")):
        with pytest.raises(DatasetError, match="is not a folder or a regular file"):
            finishes(lambda source=source: load_dataset(source))
    code, _, err = finishes(lambda: run_cli(capsys, "evaluate", pipe, "--device", "cpu", "-q"))
    assert code == 2 and "not a folder or a regular file" in one_error_line(err)


def test_csv_rows_naming_a_fifo_or_device_are_skipped_and_the_rest_completes(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(store, "extract_features", fake_extract)
    fifo(tmp_path / "pipe.png")
    path = csv_dataset(tmp_path, "path,individual\na.png,x\npipe.png,y\n/dev/zero,z\nb.png,w\n")
    data = load_dataset(path)
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        stored = finishes(lambda: store.annotation_features(data.annotations, FeatureStore(tmp_path / "s"),
                                                            tiny_config(), progress=False))
    assert [a.path.name for a in stored.annotations] == ["a.png", "b.png"]
    assert len(stored.report.failed) == 2
    assert "pipe.png cannot be read" in caplog.text and "/dev/zero cannot be read" in caplog.text


@pytest.mark.parametrize("body, needles", [
    ("path,individual\na.png,x\nb\0.png,y\n", ["line 3", "NUL byte"]),
    ("path,individual\na.png,caf\xe9\n", ["line 2", "not UTF-8"]),
    ("path,individual,x,y,w,h\na.png,x,0,0,inf,5\n", ["line 2", "inf", "finite"]),
    ("path,individual,x,y,w,h\na.png,x,nan,0,5,5\n", ["line 2", "finite"]),
    ("path,individual,x,y,w,h\na.png,x,1e300,0,5,5\n", ["line 2", "1e300", "at most 1048576"]),
    ("path,individual,x,y,w,h\na.png,x,0,0,-Infinity,5\n", ["line 2", "finite"]),
    ("path,individual\na.png,x\na.png,y\n", ["line 3", "'y' here but 'x' on line 2"]),
    ("path,individual\na.png," + "x" * 200_000 + "\n", ["after line 1", "field larger than field limit"]),
    ("path,individual\na.png,x,surplus\n", ["line 2", "more cells than header columns"]),
    ("path,individual\n".encode("utf-16").decode("latin-1"), ["line 1", "NUL byte"]),  # Excel's "Unicode text"
])
def test_bad_csv_rows_fail_up_front_naming_the_line(tmp_path, capsys, body, needles):
    encoding = "latin-1" if "\xe9" in body or "\x00" in body and "\xff" in body else "utf-8"
    path = csv_dataset(tmp_path, body, encoding=encoding)
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    for needle in needles:
        assert needle in str(caught.value), (needle, caught.value)
    code, _, err = run_cli(capsys, "evaluate", path, "--output", tmp_path / "out", "--device", "cpu", "-q")
    assert code == 2 and needles[0] in one_error_line(err)


def test_every_bad_row_is_named_in_one_message(tmp_path):
    rows = "".join(f"a.png,x,0,0,{bad},5\n" for bad in ("inf", "x", "-1", "nan", "1e9", "0", "1e400"))
    with pytest.raises(DatasetError) as caught:
        load_dataset(csv_dataset(tmp_path, "path,individual,x,y,w,h\n" + rows))
    message = str(caught.value)
    assert "\n" not in message
    assert [f"line {n}" in message for n in range(2, 7)] == [True] * 5
    assert "and 2 more bad rows" in message


def test_duplicate_rows_are_reported_and_used_once(tmp_path, caplog):
    body = ("path,individual,x,y,w,h\na.png,x,0,0,10,10\nb.png,y,,,,\n./a.png,x,0,0,10,10\na.png,x,1,0,10,10\n"
            "b.png,y,,,,\n")
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        data = load_dataset(csv_dataset(tmp_path, body))
    assert [(a.path.name, a.bbox) for a in data.annotations] == [
        ("a.png", (0, 0, 10, 10)), ("b.png", None), ("a.png", (1, 0, 10, 10))]
    assert "2 rows repeat an earlier row" in caplog.text and "line 4 (= 2), 6 (= 3)" in caplog.text


def test_csv_size_cap(tmp_path, monkeypatch):
    path = csv_dataset(tmp_path, "path,individual\n" + "a.png,x\n" * 100)
    monkeypatch.setattr(dataset_module, "MAX_CSV_BYTES", 500)
    with pytest.raises(DatasetError, match="816 bytes; the limit is 500"):
        load_dataset(path)


def test_natural_sort_with_non_ascii_digit_characters(tmp_path):
    names = ["ind10", "①", "ind2", "ind²", "٣", "ind٣", "x①2"]
    assert sorted(names, key=natural_key) == ["٣", "ind2", "ind٣", "ind10", "ind²", "x①2", "①"]
    body = "path,individual\n" + "".join(f"a.png,{n}\n" if k == 0 else f"{'bc'[k % 2]}.png,{n}\n"
                                         for k, n in enumerate(names[:2]))
    assert load_dataset(csv_dataset(tmp_path, body)).individuals == ["ind10", "①"]

# ============================================================================ the on-disk feature store
@pytest.fixture(scope="module")
def stored_photo(tmp_path_factory):
    """One photo with a real entry in a store (real ALIKED), and the entry's bytes."""
    root = tmp_path_factory.mktemp("store")
    photo = write_png(root / "photo.png", textured_chip(50, (120, 160)))
    feats, keys, report = FeatureStore(root / "store").features([(photo, None)], tiny_config(), progress=False)
    assert report.extracted == 1
    entry = FeatureStore(root / "store").entry_path(keys[0], tiny_config().feature_fingerprint)
    return {"photo": photo, "feats": feats[0], "entry": entry, "bytes": entry.read_bytes(), "store": root / "store"}


def damage_cases(data: bytes):
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # inside the descriptors: the zip's CRC catches it
    buf = io.BytesIO()
    np.savez(buf, keypoints=np.zeros((5, 2), np.float32), descriptors=np.zeros((5, 64), np.float32),
             keypoint_scores=np.zeros(5, np.float32), image_size=np.array([160, 120]))
    nan = io.BytesIO()
    np.savez(nan, keypoints=np.full((5, 2), np.nan, np.float32), descriptors=np.zeros((5, 128), np.float32),
             keypoint_scores=np.zeros(5, np.float32), image_size=np.array([160, 120]))
    return {"truncated": data[:len(data) // 2], "zero-length": b"", "bit-flipped": bytes(flipped),
            "wrong shape": buf.getvalue(), "NaN keypoints": nan.getvalue(), "not a zip": b"hello" * 100}


@pytest.mark.parametrize("damage", ["truncated", "zero-length", "bit-flipped", "wrong shape", "NaN keypoints",
                                    "not a zip"])
def test_a_damaged_entry_is_re_extracted_with_a_warning(stored_photo, caplog, damage):
    entry, photo = stored_photo["entry"], stored_photo["photo"]
    entry.write_bytes(damage_cases(stored_photo["bytes"])[damage])
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        feats, _, report = FeatureStore(stored_photo["store"]).features([(photo, None)], tiny_config(),
                                                                       progress=False)
    assert (report.loaded, report.extracted, report.failed) == (0, 1, [])
    assert str(entry) in caplog.text and "re-extracting" in caplog.text
    for name in store.ARRAY_KEYS:
        np.testing.assert_array_equal(feats[0][name], stored_photo["feats"][name])
    feats, _, report = FeatureStore(stored_photo["store"]).features([(photo, None)], tiny_config(), progress=False)
    assert (report.loaded, report.extracted) == (1, 0)  # the damaged entry was overwritten


def test_every_single_byte_flip_of_an_entry_is_caught_or_harmless(stored_photo, caplog):
    data, entry = stored_photo["bytes"], stored_photo["entry"]
    fingerprint = tiny_config().feature_fingerprint
    key = entry.stem
    target = FeatureStore(entry.parents[2])
    outcomes = {"rejected": 0, "identical": 0}
    positions = sorted(set(range(0, 400)) | set(range(400, len(data), 97)) | set(range(len(data) - 200, len(data))))
    with caplog.at_level(logging.ERROR, "wbia_lightglue"):  # the warnings are asserted elsewhere
        for pos in positions:
            flipped = bytearray(data)
            flipped[pos] ^= 0x41
            entry.write_bytes(bytes(flipped))
            feats = target.load(key, fingerprint)
            if feats is None:
                outcomes["rejected"] += 1
                continue
            for name in store.ARRAY_KEYS:  # anything that loads must be exactly what was stored
                np.testing.assert_array_equal(feats[name], stored_photo["feats"][name])
            outcomes["identical"] += 1
    entry.write_bytes(data)
    assert outcomes["rejected"] > len(positions) // 2, outcomes


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from wbia_lightglue.data.store import FeatureStore

    def stalls(out, **arrays):  # half an entry written, then the process is killed
        out.write(b"PK\\x03\\x04" + b"x" * 4000)
        out.flush()
        print("WRITING", flush=True)
        time.sleep(120)

    np.savez = stalls
    feats = {"keypoints": np.zeros((3, 2), np.float32), "descriptors": np.zeros((3, 128), np.float32),
             "keypoint_scores": np.zeros(3, np.float32), "image_size": np.array([160, 120])}
    FeatureStore(sys.argv[1]).save(sys.argv[2], sys.argv[3], feats)
""")


def test_a_writer_killed_mid_save_leaves_no_entry_and_the_next_run_cleans_up(tmp_path, caplog):
    photo = write_png(tmp_path / "photo.png", textured_chip(51, (120, 160)))
    config = tiny_config()
    fingerprint, key = config.feature_fingerprint, content_key(photo.read_bytes())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "store"), key, fingerprint],
                              stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert writer.stdout.readline().strip() == "WRITING"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    target = FeatureStore(tmp_path / "store")
    left = list(target.temp_dir(fingerprint).iterdir())
    assert len(left) == 1 and left[0].stat().st_size > 4000  # what SIGKILL leaves: a temporary file only
    assert not target.entry_path(key, fingerprint).exists()  # never a half-written entry
    # a run while the file is fresh (it could be a live writer's) leaves it alone and still works
    feats, _, report = target.features([(photo, None)], config, progress=False)
    assert report.extracted == 1 and left[0].exists()
    old = time.time() - store.STALE_TEMP_SECONDS - 60
    os.utime(left[0], (old, old))
    with caplog.at_level(logging.INFO, "wbia_lightglue"):
        feats, _, report = FeatureStore(tmp_path / "store").features([(photo, None)], config, progress=False)
    assert report.loaded == 1 and "removed 1 temporary files" in caplog.text
    assert list(target.temp_dir(fingerprint).iterdir()) == []
    assert [p.name for p in (tmp_path / "store").rglob("*") if p.is_file()] == [f"{key}.npz"]


FULL_DISK = textwrap.dedent("""
    import json, logging, resource, signal, sys
    from wbia_lightglue import core
    from wbia_lightglue.data.store import FeatureStore
    from wbia_lightglue.engine.models import get_extractor

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("wbia_lightglue").addHandler(handler)
    config = core.Config({"max_num_keypoints": 128, "image_size": 256, "device": "cpu"})
    get_extractor(config)  # weights read before the limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    feats, keys, report = FeatureStore(sys.argv[1]).features([(p, None) for p in sys.argv[2:]], config,
                                                            progress=False)
    print("RESULT", json.dumps({"extracted": report.extracted, "failed": report.failed,
                                "keypoints": [len(f["keypoints"]) for f in feats],
                                "warnings": [w for w in warnings if "cannot be written" in w]}))
""")


def test_a_full_disk_keeps_the_features_and_warns_once(tmp_path):
    photos = [str(write_png(tmp_path / f"p{k}.png", textured_chip(60 + k, (120, 160)))) for k in range(3)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "store"), *photos], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["extracted"] == 3 and result["failed"] == [] and min(result["keypoints"]) > 20
    assert len(result["warnings"]) == 1 and "File too large" in result["warnings"][0]
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []  # no entry, no temporary file


def test_a_store_that_cannot_be_created_or_written_is_skipped_with_one_warning(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(store, "extract_features", fake_extract)
    photos = [(write_png(tmp_path / f"p{k}.png", textured_chip(70 + k, (40, 40))), None) for k in range(3)]
    (tmp_path / "file").write_text("not a folder")
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        feats, _, report = FeatureStore(tmp_path / "file" / "store").features(photos, tiny_config(), progress=False)
    assert report.extracted == 3 and all(f is not None for f in feats)
    assert caplog.text.count("cannot be written") == 1 and "Not a directory" in caplog.text

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    caplog.clear()
    monkeypatch.setattr(store, "atomic_write", read_only)
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        feats, _, report = FeatureStore(tmp_path / "ro").features(photos, tiny_config(), progress=False)
    assert report.extracted == 3 and caplog.text.count("Read-only file system") == 1


def test_first_run_memory_follows_the_chunk_not_the_dataset(tmp_path, monkeypatch):
    """40 photos of ~1 MB each: raw bytes and decoded chips are held a chunk (4) at a time."""
    monkeypatch.setattr(store, "extract_features", fake_extract)
    rng = np.random.default_rng(0)
    photos = [(write_png(tmp_path / f"p{k:02d}.png", rng.integers(0, 256, (580, 600, 3), np.uint8)), None)
              for k in range(40)]
    total = sum(p.stat().st_size for p, _ in photos)
    assert total > 40e6

    def peak(chunk: int) -> int:
        monkeypatch.setattr(store, "EXTRACT_CHUNK", chunk)
        tracemalloc.start()
        try:
            _, _, report = FeatureStore(tmp_path / f"store{chunk}").features(photos, tiny_config(), progress=False)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert report.extracted == 40

    assert peak(4) < 12e6  # about 4 files + 4 chips
    assert peak(64) > total  # one chunk for everything: the old behaviour, every file at once


def test_stored_entries_with_bad_dtypes_or_shapes_are_named():
    good = {"keypoints": np.zeros((4, 2), np.float32), "descriptors": np.zeros((4, 128), np.float32),
            "keypoint_scores": np.zeros(4, np.float32), "image_size": np.array([10, 20])}
    assert store.entry_problem(good) is None
    for name, bad, needle in [("keypoints", np.zeros((4, 3), np.float32), "keypoints"),
                              ("keypoints", np.zeros((4, 2), np.float64), "keypoints float64"),
                              ("descriptors", np.zeros((5, 128), np.float32), "expected float32 [4 x 128]"),
                              ("keypoint_scores", np.zeros(3, np.float32), "keypoint_scores"),
                              ("image_size", np.array([0, 20]), "image_size"),
                              ("image_size", np.array([1.0, 2.0]), "image_size"),
                              ("descriptors", np.full((4, 128), np.inf, np.float32), "non-finite")]:
        assert needle in store.entry_problem({**good, name: bad}), name


# ============================================================================ command line: memory, outputs
@pytest.mark.parametrize("settings, fits", [
    ({"image_size": 4096, "max_num_keypoints": 16384}, False),
    ({"image_size": 512, "max_num_keypoints": 16384}, False),  # 7 GiB per pair
    ({"image_size": 512, "max_num_keypoints": 2048}, True),
])
def test_settings_whose_memory_cannot_fit_are_refused_with_the_estimate(settings, fits, caplog):
    config = tiny_config(**settings)
    estimate = memory.estimate_memory(config)
    assert estimate.extraction == settings["image_size"] ** 2 * memory.EXTRACT_BYTES_PER_PIXEL["aliked-n16"]
    available = 4 << 30  # a 4 GiB device
    if fits:
        assert memory.check_memory(config, available=available).available == available
        with caplog.at_level(logging.WARNING, "wbia_lightglue"):
            memory.check_memory(config, available=estimate.largest + estimate.largest // 2)
        assert "may run out of memory" in caplog.text
    else:
        with pytest.raises(ConfigError, match=r"cannot fit in memory: image_size \d+ .* GiB .* 4.0 GiB available"):
            memory.check_memory(config, available=available)


def test_cli_refuses_settings_this_machine_cannot_hold(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device: 8 << 30)
    code, _, err = run_cli(capsys, "extract", tmp_path, "--device", "cpu", "--image-size", "4096",
                           "--keypoints", "16384")
    assert code == 2
    line = one_error_line(err)
    assert "27.3 GiB to extract one photo" in line and "7.0 GiB to match one pair" in line and "8.0 GiB" in line


def test_identify_runs_with_an_unusable_calibration(tmp_path, capsys):
    config_path = tmp_path / "conf" / "lightglue.json"
    config_path.parent.mkdir()
    config_path.write_text(json.dumps(TINY))
    from wbia_lightglue.engine.calibration import calibration_path

    calibration_path(load_config(config_path)).write_bytes(b"\x00\x01binary")  # where this config's is looked up
    for k in range(2):
        write_png(tmp_path / "db" / f"ind{k}" / "a.png", textured_chip(30 + k, (120, 160)))
    query = write_png(tmp_path / "q.png", warp(textured_chip(30, (120, 160))))
    code, out, err = run_cli(capsys, "identify", query, tmp_path / "db", "--config", config_path,
                             "--cache-dir", tmp_path / "store", "-q")
    assert code == 0, err
    assert "calibration" in err and "is unusable" in err and "probability" not in out
    assert out.splitlines()[2].split()[:2] == ["1", "ind0"]


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "identify"])
def test_outputs_are_checked_before_any_pair_is_scored(tmp_path, capsys, monkeypatch, command):
    extracted = []
    monkeypatch.setattr(store, "extract_features", lambda chips, *a, **k: extracted.append(len(chips)) or [])
    for k in range(2):
        write_png(tmp_path / "db" / f"ind{k}" / "a.png", textured_chip(40 + k, (64, 64)))
    (tmp_path / "file").write_text("a file, not a folder")
    blocked = tmp_path / "file" / "out"
    argv = {"evaluate": ["evaluate", tmp_path / "db", "--output", blocked],
            "calibrate": ["calibrate", tmp_path / "db", "--output", blocked / "c.json"],
            "identify": ["identify", tmp_path / "db" / "ind0" / "a.png", tmp_path / "db", "--json", blocked / "r.json"]}
    code, _, err = run_cli(capsys, *argv[command], "--device", "cpu", "-q", "--cache-dir", tmp_path / "s")
    assert code == 2 and extracted == []
    assert f"cannot write to {blocked}" in one_error_line(err) and "Not a directory" in err
    assert check_writable_dir(tmp_path / "new" / "folder") is None

# ============================================================================ faults: out of memory, cache
class OutOfMemoryAbove:
    """Wraps a batch function: raises torch.cuda.OutOfMemoryError whenever a batch has more than ``limit`` items."""

    def __init__(self, real, limit, count=lambda args: len(args[1])):
        self.real, self.limit, self.count, self.seen = real, limit, count, []

    def __call__(self, *args, **kwargs):
        size = self.count(args)
        self.seen.append(size)
        if size > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: {size} > {self.limit})")
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def small_features():
    config = tiny_config()
    chips = [textured_chip(80 + k % 4, (120, 160)) if k < 4 else warp(textured_chip(80 + k % 4, (120, 160)), 5 + k)
             for k in range(9)]
    return core.extract_features(chips, config, progress=False)


def test_matcher_halves_the_batch_on_out_of_memory(small_features, caplog):
    query, database = small_features[0], small_features[1:]
    settings = MatchSettings()
    reference = BatchedLightGlue(get_lightglue(torch.device("cpu")), torch.device("cpu")).match(
        query, database, settings, batch_size=2)  # the batches the back-off ends with: identical arithmetic
    matcher = BatchedLightGlue(get_lightglue(torch.device("cpu")), torch.device("cpu"))
    fake = OutOfMemoryAbove(matcher._match_batch, 2, count=lambda args: len(args[1]))
    matcher._match_batch = fake
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        results = matcher.match(query, database, settings, batch_size=8)
    assert fake.seen == [8, 4, 2, 2, 2, 2]  # 8 -> 4 -> 2, then the smaller batch is kept
    assert [r.score for r in results] == [r.score for r in reference]
    assert "out of memory on cpu matching 8 pairs at once; retrying 4 at a time" in caplog.text
    matcher._match_batch = OutOfMemoryAbove(fake.real, 0)
    with pytest.raises(OutOfDeviceMemory, match="one pair of 128 x 128 keypoints; lower max_num_keypoints"):
        matcher.match(query, database, settings, batch_size=4)


def test_extraction_halves_the_batch_on_out_of_memory(monkeypatch, caplog):
    chips = [textured_chip(90 + k, (120, 160)) for k in range(5)]
    config = tiny_config()
    reference = core.extract_features(chips, config, batch_size=1, progress=False)
    fake = OutOfMemoryAbove(extraction._run_aliked, 1)
    monkeypatch.setattr(extraction, "_run_aliked", fake)
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        out = core.extract_features(chips, config, batch_size=4, progress=False)
    assert fake.seen == [4, 2, 1, 1, 1, 1, 1]
    for got, want in zip(out, reference):
        np.testing.assert_allclose(got["keypoints"], want["keypoints"], atol=1e-3)
    assert "retrying 2 at a time" in caplog.text
    monkeypatch.setattr(extraction, "_run_aliked", OutOfMemoryAbove(fake.real, 0))
    with pytest.raises(OutOfDeviceMemory, match="one chip at image_size 256 with aliked-n16; lower image_size"):
        core.extract_features(chips[:2], config, batch_size=2, progress=False)


def test_cache_byte_bound_holds_when_a_caller_mutates_what_it_got():
    feats = {"keypoints": np.zeros((100, 2), np.float32), "descriptors": np.zeros((100, 128), np.float32)}
    one = core.features_nbytes(feats)
    cache = FeatureCache(max_entries=10, max_bytes=3 * one)
    cache.put("a", "fp", feats)
    got = cache.get("a", "fp")
    got["descriptors"] = np.zeros((100_000, 128), np.float32)  # 51 MB into the caller's own dict
    with pytest.raises(ValueError, match="read-only"):
        cache.get("a", "fp")["keypoints"][0, 0] = 5.0
    feats["descriptors"] = np.ones((1, 128), np.float32)  # the dict that was put is not the cache's either
    assert cache.stats()["bytes"] == one
    again = cache.get("a", "fp")
    assert again["descriptors"].shape == (100, 128) and not again["descriptors"].any()
    out = cache.get_or_compute(["a", "b"], "fp", lambda keys: [dict(feats) for _ in keys])
    out[1]["keypoints"] = np.zeros((10**6, 2), np.float32)
    assert cache.stats()["bytes"] <= 3 * one


def test_read_only_cached_features_match_exactly_like_writable_ones(small_features):
    cache = FeatureCache(max_entries=10)
    for k, feats in enumerate(small_features[:3]):
        cache.put(k, "fp", feats)
    frozen = [cache.get(k, "fp") for k in range(3)]
    assert not frozen[0]["descriptors"].flags.writeable
    config = tiny_config()
    assert core.match_scores(frozen[0], frozen[1:], config) == core.match_scores(
        small_features[0], small_features[1:3], config)
