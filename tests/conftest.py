"""Shared fixtures: real photos (LightGlue's four in tests/data/photos; nyala from ../shared, skipped cleanly when
absent) and project-made images."""
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PHOTOS = ROOT / "tests" / "data" / "photos"  # in the repository (Apache-2.0, see NOTICE there)
NYALA = SHARED / "data" / "nyala"


@pytest.fixture(scope="session")
def photos():
    """The four real photos (two views each of two scenes) as BGR chips, keyed by file stem."""
    chips = {p.stem: cv2.imread(str(p)) for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".jpg", ".png")}
    assert len(chips) == 4 and all(c is not None for c in chips.values()), f"{PHOTOS} is incomplete: {sorted(chips)}"
    return chips


def run_captured(argv):
    """``wbia-lightglue ARGV`` in-process with stdout/stderr captured: (exit code, stdout, stderr).

    For session- and module-scoped fixtures, where pytest's capsys is not available.
    """
    import contextlib
    import io

    from wbia_lightglue import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The built-in demo, run once per session with its own settings on CPU: (code, stdout, stderr, folder).

    The output folder has a space in its name (reports must cope with such paths).
    """
    folder = tmp_path_factory.mktemp("demo") / "demo out"
    code, out, err = run_captured(["demo", "--output", folder, "--device", "cpu", "-q"])
    return code, out, err, folder


@pytest.fixture(scope="session")
def nyala_dir():
    if not (NYALA / "labels.csv").is_file():
        pytest.skip(f"{NYALA} is absent")
    return NYALA


def pytest_runtest_makereport(item, call):
    """Under CI (WBIA_LIGHTGLUE_STRICT_TIERS=1) a skipped test fails: every tier must really run.

    Only tests marked ``gpu`` may skip there (CI has no GPU).
    """
    import os

    from _pytest.reports import TestReport

    report = TestReport.from_item_and_call(item, call)
    if os.environ.get("WBIA_LIGHTGLUE_STRICT_TIERS") == "1" and report.skipped and "gpu" not in item.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under WBIA_LIGHTGLUE_STRICT_TIERS=1 (a tier did not run): {reason}"
    return report


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same rule for whole modules skipped at collection (e.g. no wbia importable)."""
    import os

    outcome = yield
    report = outcome.get_result()
    if os.environ.get("WBIA_LIGHTGLUE_STRICT_TIERS") == "1" and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"module skipped under WBIA_LIGHTGLUE_STRICT_TIERS=1 (a tier did not run): {reason}"
