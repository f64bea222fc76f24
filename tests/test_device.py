"""The GPU device call, prepared and dry-run on the CPU: the pack (tools/device/pack.py), the
offline set-up (tools/install/setup_env.py --find-links/--no-index, a kept older torch) and the
device script (tools/device/run.sh) with the same commands at tiny settings."""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO
from tools.device import pack  # the repository is on pytest's path (pytest.ini)
from tools.install import detectron2_fallback, setup_env


def _wheel(folder: Path, name: str, requires: list) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: " + name + "\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return path


def test_pack_names_a_requirement_neither_packed_nor_on_the_image(tmp_path):
    wheels = [_wheel(tmp_path, "fvcore", ["yacs>=0.1.6", "numpy", "tqdm",
                                          'dataclasses; python_version < "3.7"']),
              _wheel(tmp_path, "yacs", ["PyYAML"]),
              _wheel(tmp_path, "lightly", ["hydra-core>=1.0", "aenum>=3.1",
                                           'pytest; extra == "dev"'])]
    missing = pack.missing_requirements(wheels, "3.12")
    # hydra-core and aenum are neither packed nor on the image; numpy/tqdm/pyyaml are there, the
    # marker and the extra do not apply
    assert missing == ["aenum (needed by lightly-1.0-py3-none-any.whl)",
                       "hydra-core (needed by lightly-1.0-py3-none-any.whl)"]
    assert pack.missing_requirements(wheels[:2], "3.12") == []


class _RecordingEnv:
    python = sys.executable

    def __init__(self):
        self.installs = []

    def pip_install(self, step, args, fix):
        self.installs.append(args)


def test_offline_setup_keeps_a_new_enough_torch_and_installs_only_what_is_missing():
    env = _RecordingEnv()
    state = {"torch": {"ok": True, "torch": "2.11.0+cu130", "torchvision": "0.26.0+cu130"},
             "unsatisfied": ["torch==2.14.1 (have 2.11.0+cu130)", "torchvision==0.29.1 (have "
                             "0.26.0+cu130)", "fvcore==0.1.5.post20221221", "lightly>=1.5"]}
    assert setup_env.ensure_torch(env, state, managed=False) is False
    assert setup_env.ensure_requirements(env, state, [REPO / "requirements.txt"]) is True
    # the torch pins of requirements.txt are not handed to pip: they would replace the image's
    assert env.installs == [["fvcore==0.1.5.post20221221", "lightly>=1.5"]]


def test_setup_refuses_an_interpreter_whose_torch_is_too_old():
    state = {"torch": {"ok": True, "torch": "2.1.2", "torchvision": "0.16.2"}, "unsatisfied": []}
    with pytest.raises(setup_env.StepFailed, match=r"torch 2\.1\.2; this project needs at least 2\.4"):
        setup_env.ensure_torch(_RecordingEnv(), state, managed=False)


def test_pip_gets_the_local_wheel_folder_and_no_index(tmp_path):
    calls = []
    env = setup_env.Environment(sys.executable, tmp_path / "setup.log",
                                ["--find-links", "/pack/wheels", "--no-index"])
    env.run = lambda step, args, fix: calls.append(args)
    env.pip_install("requirements", ["yacs>=0.1.8"], "fix")
    assert calls == [["-m", "pip", "install", "--disable-pip-version-check", "--find-links",
                      "/pack/wheels", "--no-index", "yacs>=0.1.8"]]
    out = subprocess.run([sys.executable, REPO / "tools/install/setup_env.py", "--no-index"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--no-index needs --find-links DIR" in out.stderr


def test_detectron2_sdist_is_taken_from_the_local_folder(tmp_path):
    local = tmp_path / "pack" / "wheels"
    local.mkdir(parents=True)
    name = f"{detectron2_fallback.SDIST_NAME}-{detectron2_fallback.SDIST_VERSION}.tar.gz"
    (local / name).write_bytes(b"sdist bytes")
    python = "/nonexistent/python"  # pip must not be run: the folder has it
    got = detectron2_fallback.download_sdist(python, tmp_path / "cache", tmp_path / "log", search=tmp_path / "pack")
    assert got == tmp_path / "cache" / name and got.read_bytes() == b"sdist bytes"


@pytest.mark.slow
def test_pack_installs_offline_and_the_device_script_runs_end_to_end(shared_data, tmp_path):
    """The pack for this interpreter (the device's is 3.12; the commands are the same), its wheels
    installed with pip --no-index into a bare folder and imported from there, then run.sh at
    tiny settings: set-up from the pack, data unpacked, every benchmark writes its JSON (the
    pretraining and loader benchmarks' figures checked here: no other test runs them)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = subprocess.run([sys.executable, REPO / "tools/device/pack.py", "--out", tmp_path / "pack",
                          "--python-version", version, "--shared-data", shared_data],
                         capture_output=True, text=True, timeout=600)
    if out.returncode and "no wheel of" in out.stderr and "pypi" in (tmp_path / "pack/pack.log"
                                                                   ).read_text().lower():
        pytest.skip(f"the package registry is not reachable here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = json.loads((tmp_path / "pack/MANIFEST.json").read_text())
    assert set(manifest["packages"]) == set(pack.PACKAGES)
    assert manifest["pack_mb"] + manifest["tracked_tree_mb"] < pack.TRAVEL_LIMIT_MB

    site = tmp_path / "site"
    wheels = sorted(str(w) for w in (tmp_path / "pack/wheels").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--target", site, *wheels], check=True, timeout=300)
    modules = ["fvcore", "iopath", "yacs", "pycocotools.mask", "termcolor", "omegaconf", "hydra",
               "antlr4", "pydantic", "submitit", "lightly.loss"]
    probe = ("import importlib, json, sys; print(json.dumps({m: importlib.import_module(m).__file__"
             " for m in sys.argv[1:]}))")
    files = json.loads(subprocess.run([sys.executable, "-c", probe, *modules], check=True,
                                      capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(site)}).stdout)
    assert all(f.startswith(str(site)) for f in files.values()), files

    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "PACK": str(tmp_path / "pack"),
           "OUT": str(tmp_path / "out"), "DATA_DIR": str(tmp_path / "data"), "STEP_TIMEOUT": "600"}
    run = subprocess.run(["bash", REPO / "tools/device/run.sh"], env=env, capture_output=True,
                         text=True, timeout=1200)
    log = (tmp_path / "out/log.txt").read_text()
    assert run.returncode == 0 and "FAILED" not in log, log[-3000:]
    assert "environment" in (tmp_path / "out/env.txt").read_text().lower()
    for name, key in (("r50_224", "samples_per_s"), ("mask_rcnn_fpn", "iterations_per_s")):
        record = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert all(side[key] > 0 for side in record["results"].values()), record
        assert record["ratio"] > 0
    # the pretraining benchmark: ours against lightly in one run, every figure of each side
    steps = json.loads((tmp_path / "out/r50_224.json").read_text())
    assert "ratio ours / lightly (samples_per_s)" in log
    for side in ("ours", "lightly"):
        r = steps["results"][side]
        assert r["samples_per_s"] > 0 and r["model_only_samples_per_s"] > 0
        assert 0 <= r["data_wait_share"] <= 1 and r["peak_memory_mb"] > 100
    assert steps["ratio"] == pytest.approx(steps["results"]["ours"]["samples_per_s"]
                                           / steps["results"]["lightly"]["samples_per_s"])
    decoded = json.loads((tmp_path / "out/r50_224_decode.json").read_text())["results"]["ours"]
    assert decoded["samples_per_s"] > 0  # INPUT.DECODE_ON_DEVICE
    # the loader alone: every path's per-core rate beside the decode limits, ours against
    # lightly's transform on the same images
    loader = json.loads((tmp_path / "out/loader_224.json").read_text())
    rates = {name: r["samples_per_s_per_core"] for name, r in loader["results"].items()}
    assert set(rates) == {
        "decode only: Pillow (ssl2det.images.decode_rgb)", "decode only: OpenCV (ours)",
        "decode only: torchvision.io.decode_jpeg", "ours: loader-side recipe",
        "ours: device-side, workers decode + crop + flip",
        "ours: INPUT.DECODE_ON_DEVICE, workers read + draw crops", "lightly SimCLRTransform"}
    assert all(rate > 0 for rate in rates.values()) and loader["files"] == 100
    assert loader["ratio_loader_side_vs_lightly"] == pytest.approx(
        rates["ours: loader-side recipe"] / rates["lightly SimCLRTransform"])
    assert "aten::" in log  # the profile's table
    assert len(list((tmp_path / "out").iterdir())) <= 8  # what a device call brings back


def test_the_package_accepts_the_torch_an_interpreter_brings(tmp_path):
    """`pip install -e .` where torch 2.11 is installed (the GPU image) must not replace it: the
    package's metadata asks for the minimum setup_env.py accepts, not requirements.txt's pin."""
    subprocess.run([sys.executable, "setup.py", "--quiet", "egg_info", "--egg-base", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    lines = (tmp_path / "ssl2det.egg-info" / "requires.txt").read_text().splitlines()
    wanted = {re.split("[<>=]", line)[0]: line for line in lines if line and line[0].isalpha()}
    minimum = ".".join(map(str, setup_env.MIN_TORCH))
    assert wanted["torch"] == f"torch>={minimum}"
    assert "==" not in wanted["torchvision"]
