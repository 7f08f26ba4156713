"""The HTML reports (evaluation.html_report) rendered in a real headless Chromium (tests/browser.py).

Each page is checked as a reader gets it: the expected number of query sections, every image decoded
(natural width > 0), no console error, failed load or dialog, and the "only errors" filter. The data carry
the bad cases: a folder and a report path with spaces, an individual whose name is HTML, an unreadable
database photo, a query with no candidates, a mislabelled photo (an error at rank 1). Tiny settings
(128 keypoints, 256 px). Without Chromium the browser tests skip (CI installs it: .ci/run).
"""
import html
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser import Browser, find_chromium
from conftest import run_captured
from images import textured_chip, warp
from test_cli import TINY, run_cli, tiny_config

from wbia_lightglue.core import load_config
from wbia_lightglue.data.dataset import Annotation
from wbia_lightglue.engine.calibration import Calibration, save_calibration
from wbia_lightglue.evaluation import html_report

HTML_NAME = """<img src=x onerror=alert(1)> & "Jerry's" """.strip()  # a legal folder name on Linux
PAGE_JS = """(() => {
  const images = Array.from(document.images);
  return {
    sections: document.querySelectorAll('section.query').length,
    statuses: Array.from(document.querySelectorAll('section.query')).map(s => s.dataset.status),
    images: images.length,
    broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    rows: Array.from(document.querySelectorAll('section.query')).map(
      s => s.querySelectorAll('table.candidates tbody tr').length),
    text: document.body.innerText,
  };
})()"""


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        pytest.skip("no Chromium to render the reports (apt-get install chromium; .ci/run installs it)")
    with Browser() as running:
        yield running


def look_at(browser, path: Path) -> dict:
    """Open ``path`` in a fresh tab; the page facts plus the problems Chromium reported."""
    page = browser.open(path)
    facts = page.evaluate(PAGE_JS)
    facts["errors"], facts["page"] = page.errors, page
    return facts


def write_dataset(root: Path) -> Path:
    """A CSV dataset under a folder with spaces; see the module docstring for what each row is for."""
    rows = ["path,individual,side"]
    names = ("ind1", "ind2", HTML_NAME)
    for k, name in enumerate(names):
        chip = textured_chip(200 + k)
        folder = root / "photos" / name
        folder.mkdir(parents=True)
        cv2.imwrite(str(folder / "a one.png"), chip)
        cv2.imwrite(str(folder / "b.png"), warp(chip, angle=9, scale=0.92))
        rows += [f"{csv_field(f'photos/{name}/{photo}')},{csv_field(name)},left" for photo in ("a one.png", "b.png")]
    cv2.imwrite(str(root / "photos" / "ind1" / "c.png"), warp(textured_chip(200), angle=-7, scale=0.95))
    rows.append("photos/ind1/c.png,ind2,left")  # mislabelled: ind1's coat filed under ind2 -> wrong at rank 1
    cv2.imwrite(str(root / "photos" / "ind1" / "lonely.png"), textured_chip(300))
    rows.append("photos/ind1/lonely.png,ind9,right")  # the only right flank: no candidates at all
    (root / "photos" / "ind2" / "corrupt.png").write_bytes(b"\x89PNG not really")
    rows.append("photos/ind2/corrupt.png,ind2,left")  # unreadable: skipped and listed
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """evaluate on the bad-case dataset through the command line: (output folder, report.json, stdout)."""
    root = tmp_path_factory.mktemp("report data") / "field trip 2026"
    labels = write_dataset(root)
    out = root / "evaluation out"
    code, stdout, err = run_captured(["evaluate", labels, "--output", out, "--group-by", "side", "--top", "2",
                                      "--cache-dir", root / "store", *TINY])
    assert code == 0, err
    assert "corrupt.png" in err
    return out, json.loads((out / "report.json").read_text()), stdout


# ----------------------------------------------------------------------------- evaluate's page
def test_evaluation_page_in_chromium(evaluated, browser):
    out, report, stdout = evaluated
    page_path = out / "report.html"
    assert f"{page_path}" in stdout and "8 of 8 queries drawn" in stdout
    facts = look_at(browser, page_path)
    assert facts["errors"] == []
    assert report["num_queries"] == 8  # the corrupt photo is not a query
    assert facts["sections"] == 8
    assert facts["broken"] == [] and facts["images"] > 8 + 1
    statuses = facts["statuses"]
    errors = [q for q in report["queries"] if q["skipped"] is None and q["rank"] > 1]
    assert len(errors) >= 1 and statuses[:len(errors)] == ["error"] * len(errors)  # errors first
    assert statuses.count("skipped") == report["num_skipped"] and statuses[-report["num_skipped"]:] == [
        "skipped"] * report["num_skipped"]
    mislabelled = next(q for q in report["queries"] if q["query"] == "ind1/c.png")
    assert mislabelled["rank"] > 1
    assert f"true individual ind2 at rank {mislabelled['rank']}" in facts["text"]
    # the only right-flank photo: its section says so instead of a table
    assert facts["rows"].count(0) == 1 and "no candidates: nothing in the database is comparable" in facts["text"]
    assert all(rows <= 2 for rows in facts["rows"])  # --top 2
    assert "corrupt.png" in facts["text"] and "1 photo(s) skipped" in facts["text"]
    assert f"Rank-1\t{100 * report['cmc']['1']:.1f}%" in facts["text"]

    # "only errors": the correct and skipped sections (and table rows) disappear
    page = facts["page"]
    page.evaluate("document.getElementById('only-errors').click()")
    visible = page.evaluate("Array.from(document.querySelectorAll('section.query'))"
                            ".filter(s => s.offsetParent !== null).length")
    assert visible == len(errors)
    assert page.errors == []


def test_evaluation_page_escapes_names(evaluated, browser):
    out, report, _ = evaluated
    source = (out / "report.html").read_text()
    assert "<img src=x" not in source and html.escape(HTML_NAME) in source
    assert "field trip 2026" in source  # the dataset's path with spaces is shown as it is
    facts = look_at(browser, out / "report.html")
    assert HTML_NAME in facts["text"]  # read back as text, not markup
    assert facts["page"].evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert facts["errors"] == []  # no alert() dialog either


def test_evaluation_page_cap_counts_what_is_left_out(evaluated, tmp_path, browser, capsys):
    out, report, _ = evaluated
    root = out.parent
    code, stdout, err = run_cli(capsys, "evaluate", root / "labels.csv", "--output", tmp_path / "capped",
                                "--group-by", "side", "--report-queries", "2", "--cache-dir", root / "store", *TINY)
    assert code == 0, err
    facts = look_at(browser, tmp_path / "capped" / "report.html")
    assert facts["sections"] == 2 and facts["errors"] == [] and facts["broken"] == []
    assert "6 left out" in facts["text"]
    all_rows = facts["page"].evaluate("document.querySelectorAll('#all-queries tbody tr').length")
    assert all_rows == 8  # every query is still listed, with its rank


# ----------------------------------------------------------------------------- identify's page
def test_identify_page_with_calibration_in_chromium(tmp_path, browser, capsys):
    root = tmp_path / "my animals"
    labels = write_dataset(root)
    config_path = tmp_path / "conf dir" / "config.json"
    config_path.parent.mkdir()
    config_path.write_text(json.dumps({"max_num_keypoints": 128, "image_size": 256, "device": "cpu"}))
    config = load_config(config_path)
    # the default mode (two-stage): a calibration of the fused score, log1p(LightGlue) + log1p(stage 1)
    save_calibration(Calibration([0.0, 12.0], [0.02, 0.98], config.pair_score_fingerprint, "fused"), config)
    query = tmp_path / "query photo.png"
    cv2.imwrite(str(query), warp(textured_chip(202), angle=-6, scale=0.9))  # the HTML-named individual's coat
    page_path = tmp_path / "reports here" / "query report.html"
    code, stdout, err = run_cli(capsys, "identify", query, labels, "--config", config_path, "--top", "3",
                                "--report", page_path, "--cache-dir", tmp_path / "store", "-q")
    assert code == 0, err
    assert f"wrote {page_path}" in stdout
    facts = look_at(browser, page_path)
    assert facts["errors"] == [] and facts["broken"] == []
    assert facts["sections"] == 1 and facts["rows"] == [3]
    assert facts["images"] == 1 + 3 * 3  # the query, then per candidate: photo, correspondences, heat
    first_row = facts["page"].evaluate(
        "Array.from(document.querySelectorAll('table.candidates tbody tr')[0].cells).map(c => c.innerText)")
    assert first_row[1] == HTML_NAME  # the right individual, escaped and read back as text
    assert "P(same)" in facts["text"] and 0.0 <= float(first_row[4]) <= 1.0
    assert "corrupt.png" in facts["text"]  # the unreadable database photo is listed
    assert not re.search(r"<img src=x", page_path.read_text())


def test_page_without_photos_or_features(tmp_path, browser):
    """Photos that vanished after scoring, and candidates without features: placeholders, nothing broken."""
    cv2.imwrite(str(tmp_path / "q.png"), textured_chip(5))
    gone = Annotation(tmp_path / "gone <b>.png", "a&b")
    there = Annotation(tmp_path / "q.png", "q")
    query = html_report.ShownQuery(there, [html_report.ShownCandidate(1, "a&b", gone, 3.0),
                                           html_report.ShownCandidate(2, "q", there, 1.0)])
    summary = html_report.identification_report(tmp_path / "page.html", query, tiny_config(), database="db",
                                                compared=2)
    assert summary.pictures == 0 and len(summary.problems) == 1 and "gone <b>.png" in summary.problems[0]
    source = summary.path.read_text()
    assert "gone &lt;b&gt;.png" in source and "a&amp;b" in source
    facts = look_at(browser, summary.path)
    assert facts["errors"] == [] and facts["broken"] == [] and facts["images"] == 2  # query + the readable photo
    assert facts["text"].count("no features for this pair") == 2 and "photo not shown" in facts["text"]


# ----------------------------------------------------------------------------- the demo's page
@pytest.mark.slow
def test_demo_page_in_chromium(demo_run, browser):
    """The demo prints where its page is; 6 of its 18 photos are drawn with 3 candidates each, all 18 listed."""
    code, out, err, folder = demo_run  # the session's one demo run (conftest.py)
    assert code == 0, err
    page_path = folder / "report.html"
    assert f"report: {page_path}" in out
    facts = look_at(browser, page_path)
    assert facts["errors"] == [] and facts["broken"] == []
    assert facts["sections"] == 6 and facts["rows"] == [3] * 6 and "12 left out" in facts["text"]
    assert facts["images"] == 1 + 6 * (1 + 3 * 3)  # CMC; per photo: itself, 3 x (photo, two pictures)
    assert facts["page"].evaluate("document.querySelectorAll('#all-queries tbody tr').length") == 18


# ----------------------------------------------------------------------------- no browser needed
def test_page_sizes_are_bounded(tmp_path):
    """A big photo is drawn downsized: thumbnails <= THUMB_PX, match pictures <= PICTURE_PX high."""
    big = cv2.resize(textured_chip(11), (2400, 1800), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    drawer = html_report._Drawer(tiny_config())
    annot = Annotation(tmp_path / "big.jpg", "x")
    thumb = drawer.thumbnail(annot)
    width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', thumb).groups())
    assert max(width, height) == html_report.THUMB_PX
    photo = drawer.photo(annot)
    assert max(photo.image.shape[:2]) == html_report.PREVIEW_PX
    assert np.allclose(photo.keypoints(np.array([[2399.5, 1799.5]])), [[399.5, 299.5]], atol=1)


def test_evaluation_queries_follow_the_protocol():
    """Candidates come from the score matrix in the protocol's order: ties count against the query, the true
    individual's place is its rank, errors come first and unanswerable queries last."""
    from wbia_lightglue.data.dataset import Dataset
    from wbia_lightglue.data.store import StoreReport
    from wbia_lightglue.evaluation.datasets import DatasetScores
    from wbia_lightglue.evaluation.protocol import evaluate_scores

    labels = ["A", "A", "B", "B", "C"]
    annots = [Annotation(Path(f"/x/{label}{k}.png"), label) for k, label in enumerate(labels)]
    scores = np.array([[np.nan, 5, 5, 1, 2],  # A0: A1 and B2 tie at 5 -> B first, A at rank 2 (an error)
                       [5, np.nan, 1, 1, 0],
                       [5, 1, np.nan, 9, 0],
                       [1, 1, 9, np.nan, 3],
                       [2, 0, 0, 3, np.nan]])  # C4: no other C -> skipped, but it still has candidates
    scored = DatasetScores(Dataset(Path("/x"), annots), scores, None, StoreReport())
    report = evaluate_scores(scores, labels, ids=[a.name for a in annots])
    queries = html_report.evaluation_queries(scored, report, top=5)
    assert [q.annotation.name for q in queries] == ["x/A0.png", "x/A1.png", "x/B2.png", "x/B3.png", "x/C4.png"]
    assert [q.status for q in queries] == ["error", "correct", "correct", "correct", "skipped"]
    first = queries[0]
    assert [c.individual for c in first.candidates] == ["B", "A", "C"] and first.true_rank == 2
    assert [c.truth for c in first.candidates] == [False, True, False]
    assert first.candidates[0].annotation.name == "x/B2.png"  # B's best photo for A0 (5 > 1)
    assert queries[-1].skipped == "no other sighting" and queries[-1].candidates[0].individual == "B"
    assert [c.rank for c in queries[-1].candidates] == [1, 2]
