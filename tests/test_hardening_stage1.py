"""Hardening II (issue 21): the surfaces added with two-stage identification — the persisted stage-1 index,
the pipeline's plan when stage 1 has no evidence, the fusion fit, the CLI's two-stage paths and outputs, names,
the match cache. Each class ends in a rebuilt file with one warning, a stated fallback, a one-line error before
any work, or an escaped name; never a traceback. The WBIA routes' share is in test_plugin_wbia.py.
"""
import csv
import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_runner import one_error_line, run_cli
from images import textured_chip, warp

from wbia_lightglue.core import load_config
from wbia_lightglue.data import store
from wbia_lightglue.data.dataset import Dataset, natural_key
from wbia_lightglue.engine.cache import MatchCache
from wbia_lightglue.engine.fusion import FusionFitError, fit_logistic
from wbia_lightglue.engine.match_types import MatchResult
from wbia_lightglue.engine.stage1 import Stage1Index, build_index
from wbia_lightglue.engine.stage1.index import synced_index
from wbia_lightglue.files import TEMP_PREFIX, atomic_write_text, printable
from wbia_lightglue.pipeline import rank_individuals, score_query
from wbia_lightglue.pipeline.stages import NO_EVIDENCE_MAX

ROOT = Path(__file__).resolve().parents[1]
NYALA = ROOT.parent / "shared" / "data" / "nyala"
TINY = ["--keypoints", "128", "--image-size", "256", "--device", "cpu", "-q"]
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
             "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}


def write_png(path: Path, image: np.ndarray) -> Path:
    """Through Python's open(): OpenCV cannot take a file name that is not valid UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def folder_dataset(root: Path, names=("ind1", "ind2", "ind10")) -> Path:
    """Individuals (distinct textures) x two views each under root/db, a third view of each in root/queries/."""
    for k, name in enumerate(names):
        chip = textured_chip(100 + k)
        write_png(root / "db" / name / "a.png", chip)
        write_png(root / "db" / name / "b.png", warp(chip, angle=10, scale=0.9))
        write_png(root / "queries" / f"query-{k}.png", warp(chip, angle=-8, scale=0.95))
    return root / "db"


def random_features(seed: int, count: int, per: int = 40):
    rng = np.random.default_rng(seed)
    return [{"descriptors": rng.integers(0, 60, (per, 128)).astype(np.uint8),
             "keypoints": (rng.random((per, 2)) * 200).astype(np.float32),
             "image_size": np.array([200, 200])} for _ in range(count)]


def flat_config(**changes):
    return load_config(None, shortlist_index="flat", **changes)


# ============================================================================ 1. the persisted stage-1 index
@pytest.fixture
def saved_index(tmp_path):
    """An index of 8 annotations (one removed and re-added: slots with holes), saved; and how to rebuild it."""
    feats = random_features(3, 8)
    keys = [f"a{i}" for i in range(8)]
    config = flat_config()
    index = build_index(keys, feats, config)
    index.remove(["a2"])
    index.add(["a2"], [feats[2]])
    path = index.save(tmp_path / "shortlist" / "index.npz")
    return {"path": path, "config": config, "keys": keys, "feats": feats, "index": index,
            "features_of": lambda missing: [feats[keys.index(k)] for k in missing]}


def npz_arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def rewrite_npz(path: Path, **changes) -> None:
    arrays = {**npz_arrays(path), **changes}
    with open(path, "wb") as out:
        np.savez(out, **arrays)


def garbage_cases(arrays: dict):
    """Well-formed npz files whose arrays are garbage: each names what the check must catch."""
    owner, counts = arrays["owner"], arrays["counts"]
    yield "owner beyond the slots", {"owner": owner + 100}
    yield "owner shuffled", {"owner": np.random.default_rng(0).permutation(owner)}
    yield "counts off by one", {"counts": counts + np.eye(1, len(counts), 0, np.int64)[0]}
    yield "negative count", {"counts": counts * np.where(np.arange(len(counts)) == 0, -1, 1)}
    yield "descriptors float", {"descriptors": arrays["descriptors"].astype(np.float32)}
    yield "descriptors of other contents", {"descriptors": 255 - arrays["descriptors"]}
    yield "keypoints reshaped", {"keypoints": arrays["keypoints"].reshape(-1)}
    yield "stored keypoints swapped", {"vec_xy": arrays["vec_xy"][::-1].copy()}
    yield "nan keypoints", {"keypoints": np.full_like(arrays["keypoints"], np.nan)}
    yield "a key twice", {"keys": np.asarray([arrays["keys"][0]] * len(arrays["keys"]))}
    yield "a key without a slot", {"slots": np.asarray(["zz"] * len(arrays["slots"]))}
    yield "unknown kind", {"kind": np.asarray("hnsw")}
    yield "faiss blob of another index", {"faiss": np.frombuffer(__import__("faiss").serialize_index(
        __import__("faiss").IndexFlatL2(64)).tobytes(), np.uint8)}
    yield "keys as numbers", {"keys": np.arange(len(arrays["keys"]))}


def test_a_well_formed_index_file_with_garbage_arrays_is_refused_at_load(saved_index):
    path, config = saved_index["path"], saved_index["config"]
    original = path.read_bytes()
    cases = list(garbage_cases(npz_arrays(path)))
    assert len(cases) >= 12
    for name, changes in cases:
        path.write_bytes(original)
        rewrite_npz(path, **changes)
        with pytest.raises(ValueError, match=r"stage-1 index .*index\.npz is (damaged|unreadable)"):
            Stage1Index.load(path, config)
        assert zipfile.is_zipfile(path), name  # the file itself is intact: only its contents disagree
    path.write_bytes(original)
    loaded = Stage1Index.load(path, config)  # the untouched file passes every check
    query = saved_index["feats"][2]
    assert loaded.search(query).scores == saved_index["index"].search(query).scores


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "garbage arrays", "empty", "not a zip"])
def test_a_damaged_index_is_reported_once_with_its_path_and_rebuilt(saved_index, caplog, damage):
    path, config = saved_index["path"], saved_index["config"]
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "flipped byte":  # inside the raw descriptors (stored uncompressed): only a CRC can tell
        offset = data.index(b"descriptors.npy") + 200
        path.write_bytes(data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1:])
    elif damage == "garbage arrays":
        rewrite_npz(path, owner=np.zeros_like(npz_arrays(path)["owner"]))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x89PNG not an index at all" * 50)
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        index, added, removed = synced_index(path, config, saved_index["keys"], saved_index["features_of"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "rebuilding it" in warnings[0], warnings
    assert (added, removed) == (8, 0) and sorted(index.keys) == sorted(saved_index["keys"])
    query = saved_index["feats"][5]
    fresh = build_index(saved_index["keys"], saved_index["feats"], config)
    assert index.search(query).scores == fresh.search(query).scores
    caplog.clear()
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):  # the rebuilt file was saved: next run is quiet
        again, added, removed = synced_index(path, config, saved_index["keys"], saved_index["features_of"])
    assert caplog.records == [] and (added, removed) == (0, 0)


def test_every_single_byte_flip_of_an_index_is_caught_or_harmless(saved_index):
    path, config = saved_index["path"], saved_index["config"]
    data = path.read_bytes()
    query = saved_index["feats"][4]
    expected = saved_index["index"].search(query).scores
    positions = np.unique(np.linspace(0, len(data) - 1, 600).astype(int))
    caught = 0
    for pos in positions:
        path.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
        try:
            loaded = Stage1Index.load(path, config)
        except ValueError:
            caught += 1
            continue
        assert loaded.search(query).scores == expected, f"byte {pos}: a flip changed the scores unnoticed"
    assert caught > len(positions) // 2


KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import numpy as np
    from wbia_lightglue.core import load_config
    from wbia_lightglue.engine.stage1 import build_index
    real = np.savez

    def stalls(out, **arrays):
        out.write(b"PK\\x03\\x04 half an index")
        out.flush()
        print("WRITING", flush=True)
        time.sleep(120)

    np.savez = stalls
    rng = np.random.default_rng(0)
    feats = [{"descriptors": rng.integers(0, 60, (30, 128)).astype(np.uint8),
              "keypoints": np.zeros((30, 2), np.float32), "image_size": np.array([9, 9])} for _ in range(3)]
    build_index(["x", "y", "z"], feats, load_config(None, shortlist_index="flat")).save(sys.argv[1])
""")


def test_a_save_killed_midway_keeps_the_old_index_and_the_next_sync_cleans_up(saved_index, caplog):
    path, config = saved_index["path"], saved_index["config"]
    before = path.read_bytes()
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], env=CHILD_ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "WRITING", child.stderr.read()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]
    assert len(leftovers) == 1 and path.read_bytes() == before  # the old index is whole, beside the temp file
    index, added, removed = synced_index(path, config, saved_index["keys"], saved_index["features_of"])
    assert (added, removed) == (0, 0) and len(index) == 8
    assert leftovers[0].exists()  # a fresh temp file may be a live writer's: kept
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    with caplog.at_level(logging.INFO, "wbia_lightglue"):
        synced_index(path, config, saved_index["keys"][:7], saved_index["features_of"])
    assert not leftovers[0].exists() and "removed 1 temporary file" in caplog.text
    assert [p.name for p in path.parent.iterdir()] == [path.name]


FULL_DISK = textwrap.dedent("""
    import json, logging, resource, sys
    import numpy as np
    from wbia_lightglue.core import load_config
    from wbia_lightglue.engine.stage1.index import synced_index
    from pathlib import Path

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    handler.setLevel(logging.WARNING)
    logging.getLogger("wbia_lightglue").addHandler(handler)
    rng = np.random.default_rng(0)
    feats = [{"descriptors": rng.integers(0, 60, (200, 128)).astype(np.uint8),
              "keypoints": np.zeros((200, 2), np.float32), "image_size": np.array([9, 9])} for _ in range(4)]
    keys = ["a", "b", "c", "d"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    index, added, removed = synced_index(Path(sys.argv[1]), load_config(None, shortlist_index="flat"), keys,
                                         lambda missing: [feats[keys.index(k)] for k in missing])
    scores = index.search(feats[1], exclude=["b"]).scores
    print("RESULT", json.dumps({"added": added, "size": len(index), "warnings": warnings}))
""")


def test_a_full_disk_warns_and_the_run_goes_on_with_the_index_in_memory(tmp_path):
    path = tmp_path / "shortlist" / "index.npz"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], env=CHILD_ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["added"] == 4 and result["size"] == 4
    assert len(result["warnings"]) == 1, result["warnings"]
    assert str(path) in result["warnings"][0] and "could not be saved" in result["warnings"][0]
    assert "File too large" in result["warnings"][0]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no half file, no temporary file


def test_identify_with_a_damaged_index_rebuilds_it_and_exits_0(tmp_path, capsys, caplog):
    db = folder_dataset(tmp_path)
    argv = ["identify", tmp_path / "queries" / "query-1.png", db, "--cache-dir", tmp_path / "store",
            "--shortlist", "2", *TINY]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    [index_file] = list((tmp_path / "store" / "shortlist").rglob("*.npz"))
    rewrite_npz(index_file, counts=npz_arrays(index_file)["counts"][::-1] * 2)
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        code, out2, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "Traceback" not in err and out2.splitlines()[1:] == out.splitlines()[1:]  # the same ranking
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(index_file) in warnings[0] and "damaged" in warnings[0], warnings
    Stage1Index.load(index_file, load_config(None, shortlist_k=2))  # rebuilt and saved whole
    code, _, err = run_cli(capsys, "identify", tmp_path / "queries", db, "--output", tmp_path / "batch",
                           "--cache-dir", tmp_path / "store", "--shortlist", "2", *TINY)  # the batch form too
    assert code == 0, err


# ============================================================================ 2. no stage-1 evidence
class ScriptedSource:
    def __init__(self, stage1, lightglue):
        self.s1, self.lg, self.lightglue_calls = list(stage1), list(lightglue), []

    def candidates(self, query, mode):
        return list(range(len(self.lg)))

    def stage1_scores(self, query, candidates):
        return [self.s1[c] for c in candidates]

    def lightglue_scores(self, query, candidates):
        self.lightglue_calls.append(list(candidates))
        return [self.lg[c] for c in candidates]


def test_a_query_without_stage1_evidence_is_matched_against_every_candidate(caplog):
    source = ScriptedSource([0.0, np.nan, -3.0, 0.0, 0.0], [1.0, 2.0, 3.0, 40.0, 5.0])
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        scored = score_query("q.png", source, load_config(None, shortlist_k=2))
    assert source.lightglue_calls == [[0, 1, 2, 3, 4]] and scored.matched.all()
    assert scored.fallback == "exhaustive" and int(np.argmax(scored.scores)) == 3
    assert "q.png has no stage-1 evidence" in caplog.text and "all 5 of 5" in caplog.text
    # one vote anywhere is evidence: the shortlist as configured, no fallback
    source = ScriptedSource([0.0, 0.0, 0.0, 0.0, 0.5], [1.0, 2.0, 3.0, 40.0, 5.0])
    scored = score_query("q.png", source, load_config(None, shortlist_k=2))
    assert source.lightglue_calls == [[4, 0]] and scored.fallback is None


def test_without_evidence_a_large_database_gets_a_bounded_fixed_sample_not_its_first_entries(caplog):
    n = 3 * NO_EVIDENCE_MAX
    runs = []
    for _ in range(2):
        source = ScriptedSource(np.zeros(n), np.ones(n))
        with caplog.at_level(logging.WARNING, "wbia_lightglue"):
            scored = score_query(7, source, load_config(None, shortlist_k=5))
        runs.append(source.lightglue_calls[0])
        assert scored.fallback == "sample" and scored.matched.sum() == NO_EVIDENCE_MAX
    assert runs[0] == runs[1]  # deterministic
    positions = np.asarray(runs[0])
    assert positions.max() > 2 * NO_EVIDENCE_MAX and positions.min() < NO_EVIDENCE_MAX  # spread over all of it
    assert "a fixed sample of 500 of 1500" in caplog.text


def nyala_left_photos(individuals: int, per: int):
    rows = list(csv.DictReader((NYALA / "labels.csv").open()))
    by_individual = {}
    for row in rows:
        if row["side"] == "left":
            by_individual.setdefault(row["individual"], []).append(NYALA / row["path"])
    chosen = sorted((ind for ind, paths in by_individual.items() if len(paths) >= per), key=natural_key)
    return {ind: by_individual[ind][:per] for ind in chosen[:individuals]}


@pytest.mark.skipif(not (NYALA / "labels.csv").is_file(), reason="needs /work/shared/data/nyala")
def test_a_washed_out_photo_without_stage1_features_still_finds_its_individual(tmp_path, capsys, caplog):
    """A low-contrast copy of a photo: Hessian-affine finds no region in it, ALIKED still matches it."""
    from wbia_lightglue.engine.stage1 import extract_stage1_features

    photos = nyala_left_photos(4, 2)
    names = list(photos)
    for ind, paths in photos.items():
        for k, source in enumerate(paths):
            write_png(tmp_path / "db" / f"n{ind}" / f"{k}.png", cv2.imread(str(source)))
    target = names[2]  # not the first individual in folder order: a blind shortlist would not reach it
    photo = cv2.imread(str(photos[target][0])).astype(np.float32)
    washed = write_png(tmp_path / "washed.png", np.clip(128 + (photo - 128) * 0.1, 0, 255).astype(np.uint8))
    config = load_config(None, max_num_keypoints=256, image_size=320, device="cpu", shortlist_k=1)
    assert len(extract_stage1_features([cv2.imread(str(washed))], config)[0]["descriptors"]) == 0
    with caplog.at_level(logging.WARNING, "wbia_lightglue"):
        code, out, err = run_cli(capsys, "identify", washed, tmp_path / "db", "--cache-dir", tmp_path / "store",
                                 "--shortlist", "1", "--keypoints", "256", "--image-size", "320", "--device", "cpu",
                                 "-q", "--json", tmp_path / "r.json", "--report", tmp_path / "r.html")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["candidates"][0]["individual"] == f"n{target}"
    assert result["fallback"] == "exhaustive" and result["matched"] == result["compared"] == 8
    assert "[fallback: exhaustive]" in out and "no stage-1 evidence" in caplog.text
    page = (tmp_path / "r.html").read_text()
    assert "fallback" in page and "LightGlue on every annotation (8 of 8)" in page


# ============================================================================ 3. fits that learn nothing
@pytest.mark.parametrize("same", [np.ones(50, bool), np.zeros(50, bool), np.zeros(0, bool)])
def test_fit_logistic_refuses_pairs_of_one_label(same):
    rng = np.random.default_rng(0)
    lg, s1 = rng.gamma(2, 5, len(same)), rng.gamma(2, 5, len(same))
    with pytest.raises(FusionFitError, match=rf"fit_logistic needs same- and different-individual pairs; got "
                                             rf"{int(same.sum())} same of {len(same)}"):
        fit_logistic(lg, s1, same)
    with pytest.raises(FusionFitError, match="3 labels"):
        fit_logistic(np.ones(4), np.ones(4), [True, False, True])
    assert issubclass(FusionFitError, ValueError)


# ============================================================================ 4. config problems before any work
def test_a_wbia_only_stage1_source_is_refused_before_any_photo_and_leaves_no_folder(tmp_path, capsys,
                                                                                     monkeypatch):
    extracted = []
    monkeypatch.setattr(store, "extract_features", lambda chips, *a, **k: extracted.append(len(chips)) or [])
    monkeypatch.setattr(store, "extract_stage1_features", lambda chips, *a, **k: extracted.append(len(chips)) or [])
    db = folder_dataset(tmp_path)
    config = tmp_path / "hs.json"
    config.write_text(json.dumps({"shortlist_k": 2, "shortlist_source": "hotspotter"}))
    new = tmp_path / "new"
    commands = [
        ["identify", tmp_path / "queries" / "query-0.png", db, "--json", new / "a" / "r.json",
         "--report", new / "b" / "r.html"],
        ["identify", tmp_path / "queries", db, "--output", new / "batch"],
        ["evaluate", db, "--output", new / "eval"],
        ["extract", db],
        ["calibrate", db, "--output", new / "cal" / "c.json"],
    ]
    for argv in commands:
        code, out, err = run_cli(capsys, *argv, "--config", config, "--cache-dir", new / "store", *TINY)
        line = one_error_line(err)
        assert code == 2 and "shortlist_source" in line and "hotspotter" in line and "WBIA" in line, (argv, err)
    assert extracted == [] and not new.exists()


def test_a_run_that_fails_before_writing_leaves_no_new_output_folder(tmp_path, capsys):
    db = folder_dataset(tmp_path)
    for argv in (["evaluate", tmp_path / "missing", "--output", tmp_path / "out" / "eval"],
                 ["identify", tmp_path / "missing.png", db, "--json", tmp_path / "out" / "j" / "r.json"],
                 ["identify", tmp_path / "missing", db, "--output", tmp_path / "out" / "batch"]):
        code, _, err = run_cli(capsys, *argv, "--cache-dir", tmp_path / "store", *TINY)
        assert code != 0 and "Traceback" not in err, err
        assert not (tmp_path / "out").exists(), argv


# ============================================================================ 5. outputs
def test_outputs_are_0644_under_the_umask_and_a_two_stage_summary_says_what_was_compared(tmp_path, capsys):
    db = folder_dataset(tmp_path)
    old = os.umask(0o022)
    try:
        code, _, err = run_cli(capsys, "evaluate", db, "--output", tmp_path / "eval", "--shortlist", "2",
                               "--cache-dir", tmp_path / "store", "--report-queries", "1", *TINY)
        assert code == 0, err
        code, _, err = run_cli(capsys, "identify", tmp_path / "queries" / "query-1.png", db,
                               "--cache-dir", tmp_path / "store", "--json", tmp_path / "id" / "r.json",
                               "--csv", tmp_path / "id" / "r.csv",
                               "--report", tmp_path / "id" / "r.html", *TINY)
        assert code == 0, err
        os.umask(0o077)
        private = atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    outputs = [tmp_path / "eval" / n for n in ("report.json", "report.html", "cmc.png")]
    outputs += [tmp_path / "id" / n for n in ("r.json", "r.csv", "r.html")]
    modes = {p.name + str(p.parent.name): stat.S_IMODE(p.stat().st_mode) for p in outputs}
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}
    assert stat.S_IMODE(private.stat().st_mode) == 0o600  # the umask is honoured, not overridden
    page = (tmp_path / "eval" / "report.html").read_text()
    compared = page.split("<th>compared</th><td>")[1].split("</td>")[0]
    assert "every pair" not in compared.replace("stage 1 on every pair", "")
    assert compared.startswith("two-stage: stage 1 on every pair, LightGlue on each query&#x27;s top 2"), compared


REPORT_FULL_DISK = textwrap.dedent("""
    import resource, sys
    from wbia_lightglue.evaluation.protocol import evaluate_scores
    import numpy as np
    n = 300
    scores = np.random.default_rng(0).random((n, n))
    report = evaluate_scores(scores, [str(i % 7) for i in range(n)], ids=[f"photo-{i}" for i in range(n)])
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        report.save(sys.argv[1])
    except OSError as exc:
        print("FAILED", exc.strerror)
""")


def test_report_json_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "eval" / "report.json"
    path.parent.mkdir()
    path.write_text('{"previous": "run"}')
    proc = subprocess.run([sys.executable, "-c", REPORT_FULL_DISK, str(path)], env=CHILD_ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "FAILED File too large" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    assert json.loads(path.read_text()) == {"previous": "run"}  # never half a new one
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_names_that_are_not_utf8_or_hold_control_characters_or_markup_are_shown_escaped(tmp_path, capsys):
    raw = os.fsencode(tmp_path) + b"/db"
    names = [b"ind\xff1", b"<i>ind2&", b"ind\x1b[31m3"]
    for k, name in enumerate(names):
        folder = os.fsdecode(raw + b"/" + name)
        chip = textured_chip(100 + k)
        write_png(Path(folder) / os.fsdecode(b"photo\xfe\x07.png"), chip)
        write_png(Path(folder) / "b.png", warp(chip, angle=10, scale=0.9))
    query = write_png(Path(os.fsdecode(os.fsencode(tmp_path) + b"/queries/q\xff<i>.png")),
                      warp(textured_chip(100), angle=-8, scale=0.95))
    out_dir = tmp_path / "id"
    code, out, err = run_cli(capsys, "identify", query, os.fsdecode(raw), "--cache-dir", tmp_path / "store",
                             "--json", out_dir / "r.json", "--csv", out_dir / "r.csv", "--report", out_dir / "r.html",
                             *TINY)
    assert code == 0, err
    assert "ind\\xff1" in out and "\x1b" not in out
    page = (out_dir / "r.html").read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert "ind\\xff1" in page and "&lt;i&gt;ind2&amp;" in page and "ind\\x1b[31m3" in page
    assert "<i>ind2" not in page and "\x1b" not in page and "\x07" not in page and "q\\xff&lt;i&gt;.png" in page
    rows = list(csv.reader(io.StringIO((out_dir / "r.csv").read_bytes().decode("utf-8"))))
    assert rows[1][1] == "ind\\xff1" and "photo\\xfe\\x07.png" in rows[1][2]
    result = json.loads((out_dir / "r.json").read_text())
    assert result["candidates"][0]["individual"] == os.fsdecode(b"ind\xff1")  # JSON keeps the name (escaped)
    code, out, err = run_cli(capsys, "identify", query.parent, os.fsdecode(raw), "--output", tmp_path / "batch",
                             "--cache-dir", tmp_path / "store", *TINY)
    assert code == 0, err
    for name in ("rankings.csv", "failed.csv", "report.html"):
        text = (tmp_path / "batch" / name).read_bytes().decode("utf-8")
        assert "\x1b" not in text and "\udcff" not in text
    assert "ind\\xff1" in (tmp_path / "batch" / "rankings.csv").read_text()
    assert printable("a\udcffb\x00\u200bc") == "a\\xffb\\x00\\u200bc" and printable("Zoë 名前") == "Zoë 名前"


# ============================================================================ 6. names
def test_individual_names_of_thousands_of_digits_sort_naturally():
    huge = "9" * 5000
    names = [f"ind{huge}", "ind10", f"ind1{'0' * 4999}", "ind2", "ind0002", f"ind{huge}a"]
    ordered = sorted(names, key=natural_key)
    assert ordered == ["ind2", "ind0002", "ind10", f"ind1{'0' * 4999}", f"ind{huge}", f"ind{huge}a"]
    assert sorted(["x\u0663", "x10", "x2"], key=natural_key) == ["x2", "x\u0663", "x10"]  # Arabic-Indic 3
    annots = [type("A", (), {"individual": n})() for n in names]
    assert Dataset(Path("."), annots).individuals == sorted(set(names), key=natural_key)
    ranking = rank_individuals([1.0] * len(names), names)  # ties: natural name order
    assert [row.individual for row in ranking] == ordered


# ============================================================================ 7. caches
def test_the_match_cache_hands_out_copies_its_callers_cannot_change():
    cache = MatchCache(max_entries=8, max_bytes=1 << 20)
    given = MatchResult(5.0, 3, 9, np.arange(6).reshape(3, 2), np.full(3, 0.5, np.float32))
    cache.put("k", given)
    given.matches[0, 0] = 99  # the caller's own array, after the put: the cache kept a copy
    given.score = -1.0
    first = cache.get("k")
    assert first.matches[0, 0] == 0 and first.score == 5.0
    with pytest.raises(ValueError, match="read-only"):
        first.confidences[0] = 7.0
    nbytes = cache._nbytes
    first.matches = np.zeros((1_000_000, 2), np.int64)  # replacing a field changes only the caller's result
    first.num_matches = 0
    second = cache.get("k")
    assert second is not first and second.matches.shape == (3, 2) and second.num_matches == 3
    assert cache._nbytes == nbytes
