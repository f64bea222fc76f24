"""ssl2det: self-supervised ResNet pretraining (stage one, `pretrain`) and detectron2 transfer
to detection and segmentation (stage two, `transfer`), over the plumbing both share (`ssl2det`);
the pipeline that runs both as stages (`pipeline`) and their benchmarks (`benchmark`).

Install with `make install`, which also provides detectron2 (it is not on PyPI under its own
name; see tools/install/detectron2_fallback.py). A plain `pip install -e .` works in an
environment that already has detectron2.
"""

from pathlib import Path

from setuptools import find_packages, setup


#: torch and torchvision as the package needs them. requirements.txt pins the pair verified here,
#: which tools/install/setup_env.py installs into our own environment; an interpreter that brings
#: its own (a GPU image's CUDA build: torch 2.11 there) keeps it, down to setup_env's MIN_TORCH.
PACKAGE_TORCH = {"torch": "torch>=2.4", "torchvision": "torchvision>=0.19"}


def requirements():
    lines = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    pinned = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    return [PACKAGE_TORCH.get(line.split("==")[0], line) for line in pinned]


setup(
    name="ssl2det",
    version="0.1.0",
    description="Self-supervised ResNet pretraining (InfoCL, SuperInfo, MRCL, InfoMin on SimCLR, "
    "MoCo v2, BYOL, Barlow Twins) and detectron2 transfer to detection and segmentation",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["ssl2det", "ssl2det.*", "pretrain", "pretrain.*", "transfer",
                                    "transfer.*", "pipeline", "pipeline.*", "benchmark",
                                    "benchmark.*"]),
    install_requires=requirements() + ["detectron2>=0.6"],
    extras_require={"test": ["pytest>=7", "lightly>=1.5"]},
    license="Apache-2.0",
)
