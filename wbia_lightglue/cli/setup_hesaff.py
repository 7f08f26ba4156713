"""``wbia-lightglue setup-hesaff``: install Hessian-affine (``pyhesaff``) into the running interpreter's environment.

``wbia-pyhesaff`` publishes only cp37..cp310 Linux x86_64 wheels, so ``pip install wbia-lightglue`` cannot bring it.
Its wheel holds no CPython extension module (pure Python and a ctypes-loaded ``libhesaff.so``), so, as
``.ci/build_env.sh`` does, the cp310 manylinux wheel is downloaded, retagged ``py3-none`` with ``wheel tags`` and
installed with ``--no-deps``. Of its declared dependencies only ``six`` and ``ubelt`` are installed beside it (its
runtime imports; numpy and matplotlib come with this package): its ``opencv-contrib-python-headless`` would
replace this package's OpenCV, and ``wbia-vtool`` is needed only by its plotting helpers.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

logger = logging.getLogger("wbia_lightglue")

PYHESAFF = "wbia-pyhesaff==4.0.0"
RUNTIME_DEPS = ("six", "ubelt")  # pyhesaff imports them; requirements.txt pins the versions CI uses
WHEEL_TOOL = "wheel>=0.40"  # the first release with `wheel tags`
CHECK = ("from wbia_lightglue.engine.stage1 import hesaff; m = hesaff.import_pyhesaff(); "
         "import os; print(getattr(m, '__version__', '?'), 'at', os.path.dirname(m.__file__))")


class SetupError(RuntimeError):
    """A step of the installation failed; the message names the step and pip's last words (exit code 1)."""


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser(
        "setup-hesaff", help="install the Hessian-affine stage-1 detector (pyhesaff) into this environment",
        description=f"Download the cp310 {PYHESAFF} wheel, retag it py3-none and pip-install it (with "
                    f"{' and '.join(RUNTIME_DEPS)}) into {sys.prefix}.")
    cmd.add_argument("--force", action="store_true", help="reinstall even when pyhesaff already imports")
    cmd.add_argument("-v", "--verbose", action="count", default=0, help="-v: each step, -vv: pip's output")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    print(main(force=args.force, verbose=args.verbose > 1))


def main(*, force: bool = False, verbose: bool = False) -> str:
    """Install pyhesaff into ``sys.executable``'s environment; returns the one-line outcome.

    Raises SetupError naming the failed step (no pip, an unsupported platform, a failed download, retag or
    install, or a pyhesaff that still does not import afterwards).
    """
    if not force:
        found = _check()
        if found is not None:
            return f"Hessian-affine is already installed (pyhesaff {found}); --force reinstalls it"
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SetupError(f"{PYHESAFF} publishes only Linux x86_64 wheels (this is {sys.platform} "
                         f"{platform.machine()}); set shortlist_detector to 'sift' instead")
    _pip(["--version"], "find pip", verbose)
    with tempfile.TemporaryDirectory(prefix="wbia-lightglue-hesaff-") as tmp:
        folder = Path(tmp)
        _pip(["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
              "--platform", "manylinux2014_x86_64", "-d", str(folder), PYHESAFF], f"download {PYHESAFF}", verbose)
        wheels = sorted(folder.glob("*cp310*.whl"))
        if len(wheels) != 1:
            raise SetupError(f"pip download {PYHESAFF} left {[w.name for w in wheels]} in {folder}, "
                             "expected one cp310 wheel")
        retagged = _retag(wheels[0], folder, verbose)
        _pip(["install", "--no-deps", "--force-reinstall", str(retagged)], f"install {retagged.name}", verbose)
    _pip(["install", *RUNTIME_DEPS], f"install {', '.join(RUNTIME_DEPS)} (pyhesaff imports them)", verbose)
    found = _check()
    if found is None:
        raise SetupError(f"{PYHESAFF} was installed into {sys.prefix} but pyhesaff does not import there "
                         f"(run: {sys.executable} -c 'import pyhesaff')")
    return (f"Hessian-affine installed: pyhesaff {found} in {sys.prefix}; "
            "shortlist_detector 'auto' (the default) now uses it")


def _retag(wheel: Path, folder: Path, verbose: bool) -> Path:
    """The wheel retagged ``py3-none-<its platforms>`` with ``wheel tags`` (the environment's, or a private one)."""
    env: Optional[Dict[str, str]] = None
    if importlib.util.find_spec("wheel") is None or _run([sys.executable, "-m", "wheel", "tags", "--help"]).returncode:
        tools = folder / "tools"  # kept out of the environment: only pyhesaff and its imports are installed
        _pip(["install", "--target", str(tools), WHEEL_TOOL], "fetch the wheel tool", verbose)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tools), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "wheel", "tags", "--remove", "--python-tag", "py3", "--abi-tag", "none",
               str(wheel)]
    done = _run(command, env)
    _report("retag " + wheel.name, command, done, verbose)
    retagged = folder / done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None
    if retagged is None or not retagged.is_file():
        raise SetupError(f"wheel tags did not name the retagged wheel of {wheel.name} (it printed "
                         f"{done.stdout.strip()!r})")
    return retagged


def _pip(arguments: List[str], step: str, verbose: bool) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    done = _run(command)
    if done.returncode and arguments == ["--version"]:
        raise SetupError(f"{sys.executable} has no pip (install it with: {sys.executable} -m ensurepip)")
    _report(step, command, done, verbose)


def _run(command: List[str], env: Optional[Dict[str, str]] = None) -> "subprocess.CompletedProcess[str]":
    logger.info("%s", " ".join(command))
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


def _report(step: str, command: List[str], done: "subprocess.CompletedProcess[str]", verbose: bool) -> None:
    if verbose:
        for line in (done.stdout + done.stderr).splitlines():
            logger.info("  %s", line)
    if done.returncode:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise SetupError(f"could not {step}: `{' '.join(command[1:])}` exited {done.returncode}: {lines[-1]}")


def _check() -> Optional[str]:
    """'<version> <path>' of pyhesaff as a fresh interpreter imports it, or None (the import is tried apart:
    this process may have tried and failed before the install)."""
    package_root = str(Path(__file__).resolve().parents[2])  # this package, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = _run([sys.executable, "-c", CHECK], env)
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
