"""Batch identify (``identify QUERIES DATABASE --output DIR``): folder and CSV queries, resume after a kill, an
unreadable query; the query listing, the journal and the one-source-for-many-queries property.

Real weights on real nyala photos (``../shared/data/nyala``, skipped when absent) at small settings: a database
of 8 photos (4 individuals x 2 left flanks), 5 query photos (the individuals' other left flanks) in a nested
folder, and a truncated JPEG among them. One feature store serves the module, so only the first run extracts.
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import pytest
from conftest import ROOT, run_captured
from images import textured_chip, warp

from wbia_lightglue.core import load_config
from wbia_lightglue.data.dataset import DatasetError, load_dataset, load_queries
from wbia_lightglue.pipeline.batch import Candidate, Journal, JournalBusy, QueryRanking, identify_batch
from wbia_lightglue.pipeline.files import store_source

SMALL = ["--keypoints", "128", "--image-size", "320", "--device", "cpu", "-q"]
NUM_QUERIES = 5  # good ones; the folder also holds one truncated JPEG


# ----------------------------------------------------------------------------- the batch on real photos
@pytest.fixture(scope="module")
def nyala_batch(nyala_dir, tmp_path_factory):
    """db.csv (8 photos), queries/ (5 photos at two depths + a truncated JPEG), queries.csv, a shared store."""
    root = tmp_path_factory.mktemp("batch")
    rows = list(csv.DictReader(open(nyala_dir / "labels.csv")))
    left = defaultdict(list)
    for row in rows:
        if row["side"] == "left":
            left[row["individual"]].append(row["path"])
    names = [name for name in left if len(left[name]) >= 3][:4]
    with open(root / "db.csv", "w") as handle:
        handle.write("path,individual\n")
        handle.writelines(f"{nyala_dir / p},{name}\n" for name in names for p in left[name][:2])
    picks = [(name, p) for name in names for p in left[name][2:3]] + [(names[0], left[names[0]][3])]
    assert len(picks) == NUM_QUERIES
    queries = []
    for k, (name, path) in enumerate(picks):  # nested: queries/day1/<n>.jpg and queries/day2/cam/<n>.jpg
        target = root / "queries" / ("day1" if k % 2 == 0 else "day2/cam") / f"{name}_{Path(path).name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(nyala_dir / path, target)
        queries.append(target.relative_to(root).as_posix())
    data = (nyala_dir / picks[1][1]).read_bytes()
    (root / "queries" / "day2" / "cut.jpg").write_bytes(data[:len(data) // 2])  # a truncated JPEG
    (root / "queries.csv").write_text("path\n" + "".join(f"{q}\n" for q in queries))
    return root


def run_batch(root: Path, queries, output: Path, *extra):
    return run_captured(["identify", queries, root / "db.csv", "--output", output, "--cache-dir", root / "store",
                         *SMALL, *extra])


def read_csv(path: Path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def journal_lines(path: Path):
    data = path.read_bytes() if path.exists() else b""
    return data[:data.rfind(b"\n") + 1].splitlines()


@pytest.fixture(scope="module")
def csv_run(nyala_batch):
    """The uninterrupted reference run: the CSV of queries (relative paths) in one go."""
    output = nyala_batch / "out-csv"
    code, out, err = run_batch(nyala_batch, nyala_batch / "queries.csv", output, "--top", "3",
                               "--report-queries", "2")
    return code, out, err, output


@pytest.fixture(scope="module")
def folder_run(nyala_batch, csv_run):
    output = nyala_batch / "out-folder"
    code, out, err = run_batch(nyala_batch, nyala_batch / "queries", output, "--top", "3", "--report-queries", "1")
    return code, out, err, output


@pytest.mark.slow
def test_csv_queries(nyala_batch, csv_run):
    code, out, err, output = csv_run
    assert code == 0, err
    table = read_csv(output / "rankings.csv")
    assert table[0] == ["query", "rank", "individual", "score", "annotation", "probability"]
    queries = (nyala_batch / "queries.csv").read_text().split()[1:]
    assert [row[0] for row in table[1:]] == [q for q in queries for _ in range(3)]  # CSV order, top 3 each
    assert [int(row[1]) for row in table[1:]] == [1, 2, 3] * NUM_QUERIES
    document = json.loads((output / "rankings.json").read_text())
    assert document["finished"] and document["num_queries"] == NUM_QUERIES
    assert (document["ranked"], document["failed"], document["computed"], document["resumed"]) == (5, 0, 5, 0)
    individuals = {row["individual"] for row in csv.DictReader(open(nyala_batch / "db.csv"))}
    for result, query in zip(document["results"], queries):
        assert result["query"] == query and result["error"] is None and result["compared"] == 8
        assert Path(result["path"]) == nyala_batch / query
        scores = [c["score"] for c in result["candidates"]]
        assert scores == sorted(scores, reverse=True) and {c["individual"] for c in result["candidates"]} <= individuals
        assert [f"{c['score']:.6f}" for c in result["candidates"]] == \
            [row[3] for row in table[1:] if row[0] == query]
    assert read_csv(output / "failed.csv") == [["query", "path", "error"]]
    page = (output / "report.html").read_text()
    assert page.count('<section class="query') == 2 and all(q in page for q in queries)  # 2 drawn, all listed
    assert "queries: 5, 5 ranked (5 computed, 0 kept from the journal), 0 failed" in out


@pytest.mark.slow
def test_folder_queries_at_any_depth(nyala_batch, csv_run, folder_run):
    code, out, err, output = folder_run
    assert code == 0, err
    document = json.loads((output / "rankings.json").read_text())
    labels = [r["query"] for r in document["results"]]
    assert sorted(labels) == sorted([q.removeprefix("queries/") for q in
                                     (nyala_batch / "queries.csv").read_text().split()[1:]] + ["day2/cut.jpg"])
    assert labels[:3] == sorted(labels[:3]) and all(label.startswith("day1/") for label in labels[:3])
    # the same photos ranked as in the CSV run: the rows depend on the photo, not on how it was listed
    ranked = {Path(r["path"]).name: r["candidates"] for r in document["results"] if r["error"] is None}
    reference = json.loads((csv_run[3] / "rankings.json").read_text())["results"]
    assert ranked == {Path(r["path"]).name: r["candidates"] for r in reference}
    # features were read from the store the CSV run filled: no extraction
    assert "database features: 0 extracted, 8 loaded from the store" in out


@pytest.mark.slow
def test_an_unreadable_query_is_listed_with_its_error_and_the_others_are_ranked(folder_run):
    code, out, err, output = folder_run
    assert code == 0, err  # the batch completed
    document = json.loads((output / "rankings.json").read_text())
    failed = [r for r in document["results"] if r["error"] is not None]
    assert [r["query"] for r in failed] == ["day2/cut.jpg"] and "truncated JPEG" in failed[0]["error"]
    assert failed[0]["candidates"] == []
    assert (document["ranked"], document["failed"]) == (NUM_QUERIES, 1)
    assert read_csv(output / "failed.csv")[1][0] == "day2/cut.jpg"
    assert "cut.jpg" not in {row[0] for row in read_csv(output / "rankings.csv")[1:]}
    assert len(read_csv(output / "rankings.csv")) == 1 + 3 * NUM_QUERIES
    assert f"{NUM_QUERIES} ranked" in out and "1 failed" in out and "day2/cut.jpg: image" in out
    assert "truncated JPEG" in err  # warned as it happened, and the batch went on
    assert "could not be identified" in (output / "report.html").read_text()
    assert not journal_lines(output / "journal.jsonl")[NUM_QUERIES:]  # failures are not journaled: retried


@pytest.mark.slow
def test_resume_after_a_kill_keeps_finished_queries_and_matches_an_uninterrupted_run(nyala_batch, csv_run):
    output = nyala_batch / "out-killed"
    journal = output / "journal.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "wbia_lightglue", "identify", str(nyala_batch / "queries.csv"),
               str(nyala_batch / "db.csv"), "--output", str(output), "--cache-dir", str(nyala_batch / "store"),
               "--top", "3", "--report-queries", "2", *SMALL]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not journal_lines(journal) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # at most the query in flight is lost
    finally:
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    finished = journal_lines(journal)
    assert 1 <= len(finished) < NUM_QUERIES

    code, out, err = run_batch(nyala_batch, nyala_batch / "queries.csv", output, "--top", "3",
                               "--report-queries", "2")
    assert code == 0, err
    kept = len(finished)
    assert f"({NUM_QUERIES - kept} computed, {kept} kept from the journal)" in out
    after = journal_lines(journal)
    assert after[:kept] == finished  # the finished queries were not redone ...
    keys = [json.loads(line)["key"] for line in after]
    assert len(keys) == NUM_QUERIES == len(set(keys))  # ... and each query was journaled exactly once
    document = json.loads((output / "rankings.json").read_text())
    assert [r["resumed"] for r in document["results"]] == [True] * kept + [False] * (NUM_QUERIES - kept)
    for name in ("rankings.csv", "failed.csv"):  # the same outputs as the uninterrupted run
        assert (output / name).read_text() == (csv_run[3] / name).read_text(), name
    reference = json.loads((csv_run[3] / "rankings.json").read_text())
    assert [{**r, "resumed": None} for r in document["results"]] == \
        [{**r, "resumed": None} for r in reference["results"]]

    # run again: nothing is computed, the database is not even read
    code, out, err = run_batch(nyala_batch, nyala_batch / "queries.csv", output, "--top", "3",
                               "--report-queries", "0")
    assert code == 0, err
    assert f"(0 computed, {NUM_QUERIES} kept from the journal)" in out and "database features: not read" in out
    assert journal_lines(journal) == after
    assert (output / "rankings.csv").read_text() == (csv_run[3] / "rankings.csv").read_text()

    # a different config (name score) is a different ranking: redone, the old entries stay in the file
    config = output / "config.json"
    config.write_text(json.dumps({"name_score": "sum"}))
    code, out, err = run_batch(nyala_batch, nyala_batch / "queries.csv", output, "--top", "3",
                               "--report-queries", "0", "--config", config)
    assert code == 0, err
    assert f"({NUM_QUERIES} computed, 0 kept from the journal)" in out
    assert len(journal_lines(journal)) == 2 * NUM_QUERIES


@pytest.mark.slow
def test_one_photo_with_output_writes_the_batch_outputs(nyala_batch, csv_run, tmp_path):
    photo = nyala_batch / (nyala_batch / "queries.csv").read_text().split()[1]
    code, out, err = run_batch(nyala_batch, photo, tmp_path / "one", "--top", "2", "--report-queries", "0")
    assert code == 0, err
    table = read_csv(tmp_path / "one" / "rankings.csv")
    reference = [row[1:] for row in read_csv(csv_run[3] / "rankings.csv")[1:3]]
    assert [row[0] for row in table[1:]] == [str(photo)] * 2 and [row[1:] for row in table[1:]] == reference


def test_nothing_identified_is_an_error_and_still_writes_the_outputs(nyala_batch, tmp_path):
    (tmp_path / "q").mkdir()
    shutil.copyfile(nyala_batch / "queries" / "day2" / "cut.jpg", tmp_path / "q" / "cut.jpg")
    code, out, err = run_batch(nyala_batch, tmp_path / "q", tmp_path / "out")
    assert code == 1 and "none of the 1 queries could be identified" in err and "truncated JPEG" in err
    assert read_csv(tmp_path / "out" / "failed.csv")[1][0] == "cut.jpg"
    assert json.loads((tmp_path / "out" / "rankings.json").read_text())["failed"] == 1


@pytest.mark.parametrize("argv, expected", [
    (["identify", "{q}", "{db}"], "is a folder: give --output DIR"),
    (["identify", "{q}/../queries.csv", "{db}"], "is a CSV: give --output DIR"),
    (["identify", "{q}", "{db}", "--output", "{out}", "--json", "{out}/r.json"], "--json are for one photo"),
    (["identify", "{q}", "{db}", "--output", "{out}", "--report-queries", "-1"], "--report-queries must be 0"),
    (["identify", "{q}/x.jpg", "{db}", "--report-queries", "3"], "--report-queries is for the batch form"),
])
def test_batch_usage_errors(tmp_path, argv, expected):
    (tmp_path / "q").mkdir()
    (tmp_path / "queries.csv").write_text("path\nq/x.jpg\n")
    values = {"q": tmp_path / "q", "db": tmp_path / "db.csv", "out": tmp_path / "out"}
    code, _, err = run_captured([a.format(**values) for a in argv])
    assert code == 2 and expected in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the query listing
def test_load_queries_folder_csv_and_photo(tmp_path):
    for name in ("b/2.jpg", "b/10.JPG", "a.png", "b/c/d/1.webp", ".hidden/x.jpg", "b/.x.jpg", "notes.txt"):
        (tmp_path / "q" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "q" / name).write_bytes(b"")
    found = load_queries(tmp_path / "q")
    assert [a.path.relative_to(tmp_path / "q").as_posix() for a in found.annotations] == \
        ["a.png", "b/2.jpg", "b/10.JPG", "b/c/d/1.webp"]  # any depth, natural order, hidden ones left out
    assert {a.individual for a in found.annotations} == {"?"}

    (tmp_path / "q.csv").write_text("path,x,y,w,h,individual,site\nq/a.png,,,,,,north\nq/b/2.jpg,1,2,3,4,ind7,south\n"
                                    "q/a.png,,,,,,north\n")
    rows = load_queries(tmp_path / "q.csv").annotations
    assert [(a.path, a.bbox, a.individual, a.attributes["site"]) for a in rows] == [
        (tmp_path / "q" / "a.png", None, "?", "north"), (tmp_path / "q" / "b" / "2.jpg", (1, 2, 3, 4), "ind7", "south")]
    assert [a.path for a in load_queries(tmp_path / "q" / "a.png").annotations] == [tmp_path / "q" / "a.png"]

    (tmp_path / "bad.csv").write_text("file\nq/a.png\n")
    with pytest.raises(DatasetError, match="lacks the column.s. path"):
        load_queries(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_queries(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_queries(tmp_path / "nowhere")
    (tmp_path / "only-path.csv").write_text("path\nq/a.png\n")
    with pytest.raises(DatasetError, match="lacks the column.s. individual"):  # a database still needs its labels
        load_dataset(tmp_path / "only-path.csv")


# ----------------------------------------------------------------------------- the journal
def ranking(key: str, top: int = 2, complete: bool = False) -> QueryRanking:
    rows = [Candidate(k, f"ind{k}", f"ind{k}/a.jpg", 10.0 / k, f"/db/ind{k}/a.jpg") for k in range(1, top + 1)]
    return QueryRanking(f"q/{key}.jpg", f"/q/{key}.jpg", rows, key=key, complete=complete, compared=7)


def test_journal_round_trip_torn_line_lock_and_other_configs(tmp_path):
    path = tmp_path / "journal.jsonl"
    with Journal(path, "rank-A", "db-1") as journal:
        journal.record(ranking("k1", top=2), top=2)
        journal.record(ranking("k2", top=1, complete=True), top=3)
        with pytest.raises(JournalBusy, match="another run"):
            Journal(path, "rank-A", "db-1")  # one writer at a time
    with open(path, "ab") as handle:
        handle.write(b'{"v":1,"key":"k3","ranking":"ran')  # a line torn by a kill
    with Journal(path, "rank-A", "db-1") as journal:
        assert len(journal) == 2
        assert journal.find("k1", 2) == QueryRanking("q/k1.jpg", "/q/k1.jpg", ranking("k1").candidates, key="k1",
                                                     compared=7, resumed=True)
        assert [c.rank for c in journal.find("k1", 1).candidates] == [1]
        assert journal.find("k1", 3) is None  # journaled with 2 rows of a longer ranking: redone for 3
        assert len(journal.find("k2", 10).candidates) == 1  # the whole ranking had one individual
        assert journal.find("k3", 1) is None
        journal.record(ranking("k4"), top=2)
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["v"] == 1 for line in lines)  # the torn tail was cut off
    with Journal(path, "rank-B", "db-1") as other_config, Journal(tmp_path / "j2", "rank-A", "db-1") as empty:
        assert len(other_config) == 0 and other_config.unused == 3 and len(empty) == 0
    path.write_bytes(path.read_bytes() + b'{"v":1,"key":"k5"}\nnot json\n')
    with Journal(path, "rank-A", "db-1") as journal:
        assert len(journal) == 3  # lines this version did not write are ignored


# ----------------------------------------------------------------------------- one source serves many queries
@pytest.mark.parametrize("shortlist", [0, 2])
def test_one_source_loads_the_database_once_and_holds_one_query_at_a_time(tmp_path, monkeypatch, shortlist):
    from wbia_lightglue.pipeline import files

    for k, name in enumerate(("ind1", "ind2", "ind3")):
        chip = textured_chip(200 + k)
        (tmp_path / "db" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "db" / name / "a.png"), chip)
        cv2.imwrite(str(tmp_path / "db" / name / "b.png"), warp(chip, angle=10, scale=0.9))
        (tmp_path / "q" / name).mkdir(parents=True)
        for j in range(2):
            cv2.imwrite(str(tmp_path / "q" / name / f"{j}.png"), warp(chip, angle=-5 - 6 * j, scale=0.95))
    config = load_config(None, max_num_keypoints=128, image_size=256, device="cpu", shortlist_k=shortlist)
    database_loads, index_loads, held = [], [], []
    real_features, real_index = files.annotation_features, files.shortlist_index
    monkeypatch.setattr(files, "annotation_features", lambda annots, *a, **kw: (
        database_loads.append(len(annots)) if len(annots) == 6 else None) or real_features(annots, *a, **kw))
    monkeypatch.setattr(files, "shortlist_index", lambda *a, **kw: index_loads.append(1) or real_index(*a, **kw))
    source = store_source(tmp_path / "db", config, tmp_path / "store", progress=False)
    real_score = files.StoreSource.lightglue_scores

    def spy(self, query, candidates):
        held.append((len(self._aliked), len(self._key), len(self._query_stage1)))  # what memory holds per query
        return real_score(self, query, candidates)

    monkeypatch.setattr(files.StoreSource, "lightglue_scores", spy)
    results = identify_batch(load_queries(tmp_path / "q"), source, config, top=3, progress=False)
    assert [r.candidates[0].individual for r in results] == ["ind1", "ind1", "ind2", "ind2", "ind3", "ind3"]
    assert database_loads == [6]  # the database's features are read once for the whole batch
    assert index_loads == ([1] if shortlist else [])  # and its stage-1 index loaded (synced) once
    assert len(set(held)) == 1, held  # memory does not grow with the number of queries
