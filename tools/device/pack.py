#!/usr/bin/env python3
"""Prepare the device pack: what the lent GPU machine's image lacks, in one ignored folder.

The lent machine (docs/performance.md#gpu-runs, ../shared/docs/gpu.md) is offline and its image
has Python 3.12, torch, torchvision, numpy 2 and most common packages, but not fvcore, iopath,
yacs, pycocotools, detectron2 or lightly. This fills `.device/` (ignored by git; name it in the
device call's `carry`) with

  wheels/    wheels for the target Python and platform of every package in PACKAGES, at the
             versions installed in the environment running this script (the ones the suite
             tests; pure-Python packages published only as sdists are built into wheels here),
             and detectron2's registry sdist for setup_env.py's fallback build: the folder is
             `setup_env.py --find-links .device/wheels --no-index`
  data/      the data the device run reads: imagenet-sample/, cifar10-jpg.tar.gz,
             detectron2/coco/ (copies: links do not travel)
  MANIFEST.json   versions, target, sizes

then checks that every requirement of every wheel is either in the pack or in the image
(IMAGE_PACKAGES), and that the pack and the tracked tree together fit the 64 MiB that travel.

    .venv/bin/python tools/device/pack.py                      # for the device (cp312)
    .venv/bin/python tools/device/pack.py --python-version 3.11 --out /tmp/pack   # dry run here

Standard library, plus pip (in every environment). A failing step says which and why.
"""

import argparse
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAVEL_LIMIT_MB = 64

#: Packages the device run needs that the image lacks: detectron2's runtime needs (fvcore,
#: iopath, yacs, pycocotools, termcolor, omegaconf, hydra-core, antlr4), the run file's schema
#: (pydantic and its parts), the SLURM executor (submitit) and the benchmark's reference
#: (lightly). Their versions are read from the running environment.
PACKAGES = ("fvcore", "iopath", "yacs", "pycocotools", "termcolor", "omegaconf", "hydra-core",
            "antlr4-python3-runtime", "pydantic", "pydantic-core", "annotated-types",
            "typing-inspection", "submitit", "lightly", "braceexpand", "webdataset")

#: What the image already has (the device tool's package list for the 'cuda' image, read
#: 2026-11-17; normalised names). A requirement outside PACKAGES must be one of these.
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

#: pack path -> source under ../shared/data
DATA = {"imagenet-sample": "imagenet-sample", "cifar10-jpg.tar.gz": "cifar10-full/cifar10-jpg.tar.gz",
        "detectron2/coco": "detectron2/coco"}

DETECTRON2_SDIST = ("pb1-detectron2", "0.6")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


class PackError(RuntimeError):
    pass


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def say(message):
    print(f"[pack] {message}", flush=True)


def pip(*args, log):
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    log.write(f"$ pip {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
    return proc


def installed_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        raise PackError(f"{name} is not installed in {sys.executable}; run this with the "
                        "project's environment (`make install-test`, then "
                        ".venv/bin/python tools/device/pack.py)") from None


def fetch_wheel(name, version, python_version, dest: Path, log) -> Path:
    """A wheel of name==version for the target: a binary from the registry, else one built here
    from the sdist (pure-Python packages only: checked by the tag)."""
    target = ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:"]
    for platform in PLATFORMS:
        target += ["--platform", platform]
    proc = pip("download", "--no-deps", *target, "-d", str(dest), f"{name}=={version}", log=log)
    if proc.returncode != 0:
        proc = pip("wheel", "--no-deps", "-w", str(dest), f"{name}=={version}", log=log)
        if proc.returncode != 0:
            raise PackError(f"no wheel of {name}=={version} for Python {python_version}, and "
                            f"building one from its sdist failed (log: {log.name})")
    found = [w for w in dest.glob("*.whl") if normalise(w.name.split("-")[0]) == normalise(name)]
    if len(found) != 1:
        raise PackError(f"expected one wheel of {name} in {dest}, found {found}")
    tags = found[0].name[:-4].split("-")[-3:]
    pure = tags[1:] == ["none", "any"]
    if not pure and tags[0] != "cp" + python_version.replace(".", ""):
        raise PackError(f"{found[0].name} does not fit Python {python_version}")
    return found[0]


def wheel_requirements(wheel: Path):
    """(requirement name, marker) of every Requires-Dist line that is not an extra."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        spec, _, marker = line[len("Requires-Dist:"):].partition(";")
        if "extra" in marker:
            continue
        yield normalise(re.split(r"[\s<>=!~\[(]", spec.strip(), maxsplit=1)[0]), marker.strip()


def marker_applies(marker: str, python_version: str) -> bool:
    if not marker:
        return True
    try:
        from packaging.markers import Marker
    except ImportError:
        from pip._vendor.packaging.markers import Marker
    return Marker(marker).evaluate({"python_version": python_version,
                                    "python_full_version": python_version + ".0",
                                    "sys_platform": "linux", "platform_system": "Linux",
                                    "platform_machine": "x86_64", "os_name": "posix",
                                    "implementation_name": "cpython"})


def missing_requirements(wheels, python_version, image=IMAGE_PACKAGES):
    """Requirements of the packed wheels that neither the pack nor the image provides."""
    packed = {normalise(w.name.split("-")[0]) for w in wheels}
    missing = set()
    for wheel in wheels:
        for name, marker in wheel_requirements(wheel):
            if name not in packed and name not in image and marker_applies(marker, python_version):
                missing.add(f"{name} (needed by {wheel.name})")
    return sorted(missing)


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size


def tracked_size() -> int:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    return sum((REPO / f.decode()).stat().st_size for f in files
               if f and (REPO / f.decode()).is_file())


def copy_data(out: Path, shared: Path) -> dict:
    sizes = {}
    for name, source in DATA.items():
        src, dst = shared / source, out / "data" / name
        if not src.exists():
            raise PackError(f"data source {src} is missing (../shared/data, see its README)")
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
        sizes[name] = tree_size(dst)
    return sizes


def detectron2_sdist(dest: Path, log) -> Path:
    """The sdist from setup_env's download cache when there, else from the registry."""
    name, version = DETECTRON2_SDIST
    filename = f"{name}-{version}.tar.gz"
    cached = REPO / ".venv" / "cache" / filename
    dest.mkdir(parents=True, exist_ok=True)
    if cached.is_file():
        shutil.copyfile(cached, dest / filename)
    else:
        proc = pip("download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
                   f"{name}=={version}", "-d", str(dest), log=log)
        if proc.returncode != 0 or not (dest / filename).is_file():
            raise PackError(f"downloading {name}=={version} failed (log: {log.name})")
    return dest / filename


def build(out: Path, python_version: str, shared: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    with open(out / "pack.log", "w") as log:
        versions = {name: installed_version(name) for name in PACKAGES}
        wheels = []
        for name, version in versions.items():
            wheels.append(fetch_wheel(name, version, python_version, out / "wheels", log))
            say(f"wheel  {wheels[-1].name}")
        missing = missing_requirements(wheels, python_version)
        if missing:
            raise PackError("the image would lack: " + ", ".join(missing) + ". Fix: add them to "
                            "PACKAGES in tools/device/pack.py")
        sdist = detectron2_sdist(out / "wheels", log)
        say(f"sdist  {sdist.name}")
    data = copy_data(out, shared)
    for name, size in data.items():
        say(f"data   {name} ({size / 2**20:.1f} MiB)")
    pack_mb, tree_mb = tree_size(out) / 2**20, tracked_size() / 2**20
    manifest = {"python_version": python_version, "platforms": PLATFORMS, "packages": versions,
                "wheels": sorted(w.name for w in wheels), "detectron2_sdist": sdist.name,
                "data": data, "pack_mb": round(pack_mb, 1), "tracked_tree_mb": round(tree_mb, 1)}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if pack_mb + tree_mb > TRAVEL_LIMIT_MB:
        raise PackError(f"pack {pack_mb:.1f} MiB + tracked tree {tree_mb:.1f} MiB exceed the "
                        f"{TRAVEL_LIMIT_MB} MiB a device call carries")
    say(f"done: {out} {pack_mb:.1f} MiB (+ {tree_mb:.1f} MiB tracked) of {TRAVEL_LIMIT_MB} MiB")
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".device",
                        help="the pack folder, replaced (default: .device, ignored by git)")
    parser.add_argument("--python-version", default="3.12",
                        help="the target interpreter's version (the device image: 3.12)")
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA,
                        help="where the data sets are (default: ../shared/data)")
    args = parser.parse_args(argv)
    try:
        build(args.out, args.python_version, args.shared_data)
    except PackError as e:
        print(f"[pack] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
