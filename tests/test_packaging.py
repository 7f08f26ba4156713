"""What a plain ``pip install`` gets: the declared dependencies, and stage 1 with or without Hessian-affine.

``shortlist_detector = "auto"`` (the default) must key stored stage-1 results exactly as ``"hesaff"`` did where
pyhesaff is installed, and fall back to OpenCV SIFT (one warning) where it is not; pyhesaff is made unimportable in
a child process (``sys.modules['pyhesaff'] = None``), so these run in the full environment too.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from images import textured_chip, warp
from packaging.requirements import Requirement

from wbia_lightglue.cli import setup_hesaff
from wbia_lightglue.engine.config import load_config
from wbia_lightglue.engine.stage1 import hesaff
from wbia_lightglue.engine.stage1.features import extract_stage1_features

ROOT = Path(__file__).resolve().parents[1]
FALLBACK = "stage 1 uses OpenCV SIFT"
# A child process in which pyhesaff cannot be imported (as after a plain pip install): runs argv[1], which it
# takes off argv
NO_HESAFF = "import sys; sys.modules['pyhesaff'] = None; exec(sys.argv.pop(1))"
# digests of the default stage-1 settings with shortlist_k = 20 as "hesaff" keyed them before "auto" existed
# (shortlist_feature_fingerprint, shortlist_fingerprint, ranking_fingerprint): stored indexes must stay valid
HESAFF_FINGERPRINTS = ("be3a4efffec3ac2f", "f9471eaf44ece25d", "a41bf98f702e5fde")


def fingerprints(config):
    return config.shortlist_feature_fingerprint, config.shortlist_fingerprint, config.ranking_fingerprint


def run_without_hesaff(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", NO_HESAFF, textwrap.dedent(code), *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=ROOT)


# ----------------------------------------------------------------------------- declared dependencies
def setup_call_keywords():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def pins(*files):
    found = {}
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                found[req.name.lower()] = next(iter(req.specifier)).version
    return found


def test_setup_declares_faiss_and_requirements_pin_inside_its_ranges():
    keywords = setup_call_keywords()
    install = [Requirement(r) for r in ast.literal_eval(keywords["install_requires"])]
    assert "faiss-cpu" in {r.name for r in install}  # two-stage (--shortlist K) after a plain pip install
    pinned = pins("requirements.txt", "requirements-nodeps.txt")
    # the one environment's OpenCV is the contrib build, which provides every module the headless one does
    pinned["opencv-python-headless"] = pinned["opencv-contrib-python-headless"]
    outside = [f"{r} (pinned {pinned.get(r.name.lower())})" for r in install
               if r.name.lower() not in pinned or pinned[r.name.lower()] not in r.specifier]
    assert not outside, outside
    extras = ast.literal_eval(keywords["extras_require"])
    assert "pytest" in {Requirement(r).name for r in extras["tests"]}
    for extra in extras.values():
        for line in extra:
            req = Requirement(line)
            assert pinned[req.name.lower()] in req.specifier, line


# ----------------------------------------------------------------------------- "auto" with pyhesaff
def test_auto_is_hesaff_where_pyhesaff_imports(photos):
    if not hesaff.available():
        pytest.skip("pyhesaff is not installed (wbia-lightglue setup-hesaff)")
    auto = load_config(None, shortlist_k=20)
    assert auto["shortlist_detector"] == "auto" and auto.stage1_detector == "hesaff"
    explicit = auto.replace(shortlist_detector="hesaff")
    assert fingerprints(auto) == fingerprints(explicit) == HESAFF_FINGERPRINTS
    assert fingerprints(auto.replace(shortlist_detector="sift")) != HESAFF_FINGERPRINTS
    chip = photos["DSC_0410"]
    small = {"shortlist_features": 500, "shortlist_image_size": 400}
    mine, theirs = (extract_stage1_features([chip], c.replace(**small))[0] for c in (auto, explicit))
    assert len(mine["descriptors"]) == 500
    for name in ("keypoints", "descriptors", "image_size"):
        np.testing.assert_array_equal(mine[name], theirs[name])


# ----------------------------------------------------------------------------- without pyhesaff
def test_auto_without_pyhesaff_is_sift_with_one_warning():
    proc = run_without_hesaff("""
        import json, logging, sys
        import numpy as np
        sys.path.insert(0, "tests")
        from images import textured_chip
        from wbia_lightglue.engine.config import ConfigError, load_config
        from wbia_lightglue.engine.stage1.features import extract_stage1_features
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        auto = load_config(None, shortlist_k=20)
        sift = auto.replace(shortlist_detector="sift")
        prints = lambda c: [c.shortlist_feature_fingerprint, c.shortlist_fingerprint, c.ranking_fingerprint]
        chip = textured_chip(3)
        a, s = (extract_stage1_features([chip, chip], c)[0] for c in (auto, sift))
        try:
            auto.replace(shortlist_detector="hesaff").shortlist_feature_fingerprint
            error = None
        except ConfigError as exc:
            error = str(exc)
        print(json.dumps({"detector": auto.stage1_detector, "auto": prints(auto), "sift": prints(sift),
                          "same_features": all(np.array_equal(a[k], s[k]) for k in a), "n": len(a["descriptors"]),
                          "error": error}))
    """)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["detector"] == "sift" and out["auto"] == out["sift"] and out["auto"] != list(HESAFF_FINGERPRINTS)
    assert out["same_features"] and out["n"] > 50
    assert proc.stderr.count(FALLBACK) == 1 and "wbia-lightglue setup-hesaff" in proc.stderr, proc.stderr
    assert out["error"].startswith("shortlist_detector 'hesaff': Hessian-affine (pyhesaff")
    assert "wbia-lightglue setup-hesaff" in out["error"] and "pip install" not in out["error"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three individuals x two views of project-made textures, a third view of ind1 as the query, a config."""
    root = tmp_path_factory.mktemp("packaging")
    for k, name in enumerate(("ind1", "ind2", "ind3")):
        chip = textured_chip(300 + k)
        (root / "db" / name).mkdir(parents=True)
        cv2.imwrite(str(root / "db" / name / "a.png"), chip)
        cv2.imwrite(str(root / "db" / name / "b.png"), warp(chip, angle=5))
        if name == "ind1":
            cv2.imwrite(str(root / "query.png"), warp(chip, angle=-7, scale=0.85))
    (root / "hesaff.json").write_text(json.dumps({"shortlist_detector": "hesaff"}))
    return root


CLI = "import sys; from wbia_lightglue import cli; sys.exit(cli.main(sys.argv[1:]))"
TINY = ["--keypoints", "128", "--image-size", "256", "--device", "cpu", "-q"]


@pytest.mark.slow
def test_two_stage_identify_without_pyhesaff_ranks_with_the_fallback(folder):
    out = folder / "ranking.json"
    proc = run_without_hesaff(CLI, "identify", str(folder / "query.png"), str(folder / "db"), "--shortlist", "2",
                              "--cache-dir", str(folder / "store"), "--json", str(out), *TINY)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(FALLBACK) == 1, proc.stderr
    ranking = json.loads(out.read_text())["candidates"]
    assert [c["individual"] for c in ranking][0] == "ind1" and len(ranking) == 3


def test_explicit_hesaff_without_pyhesaff_is_one_line_naming_the_fix(folder):
    proc = run_without_hesaff(CLI, "identify", str(folder / "query.png"), str(folder / "db"), "--shortlist", "2",
                              "--config", str(folder / "hesaff.json"), "--cache-dir", str(folder / "store2"), *TINY)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("wbia-lightglue: error: shortlist_detector 'hesaff': Hessian-affine")
    assert "run `wbia-lightglue setup-hesaff`" in lines[0]


# ----------------------------------------------------------------------------- setup-hesaff
def test_setup_hesaff_leaves_an_installed_pyhesaff_alone(monkeypatch):
    if not hesaff.available():
        pytest.skip("pyhesaff is not installed (wbia-lightglue setup-hesaff)")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip was run although pyhesaff imports")

    monkeypatch.setattr(setup_hesaff, "_pip", no_pip)
    line = setup_hesaff.main()
    assert line.startswith("Hessian-affine is already installed (pyhesaff 4.0.0 at ") and "--force" in line


def test_setup_hesaff_refuses_a_platform_without_wheels(monkeypatch):
    monkeypatch.setattr(setup_hesaff.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(setup_hesaff, "_pip", lambda *a: pytest.fail("pip was run on an unsupported platform"))
    with pytest.raises(setup_hesaff.SetupError, match="only Linux x86_64 wheels .* set shortlist_detector to 'sift'"):
        setup_hesaff.main(force=True)
