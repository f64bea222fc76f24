"""Install detectron2 v0.6 from its registry sdist, without the compiled extension.

detectron2 is not on PyPI under its own name. ``pb1-detectron2==0.6`` is an sdist of the upstream
v0.6 Python package (with its model-zoo configs and the DeepLab / PointRend / Panoptic-DeepLab
projects) but without the C++/CUDA sources, so ``pip install`` of it fails while compiling.
This module fetches it, places its ``detectron2/`` package into site-packages, adds a stand-in for
the compiled ``detectron2._C`` (see ``detectron2_C_standin.py``), applies the few compatibility
edits that current numpy / Pillow / setuptools need, and writes a ``.dist-info`` so that pip and
``importlib.metadata`` see ``detectron2 0.6`` as installed (``pip uninstall detectron2`` works).

Standard library only: it runs before the project's environment exists.
"""

import base64
import hashlib
import json
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ssl2det.process import run_logged  # standard library only

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
#: Bump when the patches or the stand-in change: an installed fallback with an older revision is
#: replaced on the next `make install`.
PATCH_REVISION = 1
INFO_FILE = "_fallback_info.json"
STANDIN = Path(__file__).with_name("detectron2_C_standin.py")

# upstream folder in the sdist -> package name under detectron2.projects (as upstream setup.py maps)
PROJECTS = {
    "projects/DeepLab/deeplab": "deeplab",
    "projects/PointRend/point_rend": "point_rend",
    "projects/Panoptic-DeepLab/panoptic_deeplab": "panoptic_deeplab",
}


@dataclass(frozen=True)
class Patch:
    """A regular-expression edit applied to every file matching `files` under the package."""

    why: str
    files: str
    pattern: str
    replacement: object  # str or callable, as for re.sub
    min_count: int  # fewer matches means the sdist changed under us: fail loudly


_NUMPY_ALIASES = {"bool": "bool", "int": "int", "float": "float", "str": "str", "object": "object"}

PATCHES = (
    Patch(
        why="numpy >= 1.24 removed the aliases np.bool/np.int/np.float/np.str/np.object",
        files="**/*.py",
        # `np.int` but not `np.int64` or `np.int_`
        pattern=r"\bnp\.(bool|int|float|str|object)\b(?!\w)",
        replacement=lambda m: _NUMPY_ALIASES[m.group(1)],
        min_count=10,
    ),
    Patch(
        why="Pillow >= 10 removed Image.LINEAR (it was an alias of Image.BILINEAR)",
        files="data/transforms/transform.py",
        pattern=r"\bImage\.LINEAR\b",
        replacement="Image.BILINEAR",
        min_count=1,
    ),
    Patch(
        why="setuptools >= 81 removed pkg_resources; the configs sit next to model_zoo.py",
        files="model_zoo/model_zoo.py",
        pattern=r"pkg_resources\.resource_filename\(\s*\"detectron2\.model_zoo\",\s*"
        r"os\.path\.join\(\"configs\", config_path\)\s*\)",
        replacement='os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
        min_count=1,
    ),
    Patch(
        why="setuptools >= 81 removed pkg_resources (the import itself fails)",
        files="model_zoo/model_zoo.py",
        pattern=r"^import pkg_resources\n",
        replacement="",
        min_count=1,
    ),
)


class FallbackError(RuntimeError):
    """A step of the fallback install failed; the message names the step and the fix."""


def download_sdist(python: str, cache_dir: Path, log_path: Path, search=None) -> Path:
    """The sdist from the cache, from the folder `search` (offline installs: a device pack),
    else fetched with the target environment's pip (its setup.py imports torch)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    filename = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
    found = sorted(cache_dir.glob(filename))
    if found:
        return found[0]
    local = sorted(Path(search).rglob(filename)) if search else []
    if local:
        shutil.copyfile(local[0], cache_dir / filename)
        return cache_dir / filename
    # pip reads the sdist's metadata with setup.py; a setuptools older than 70.1 (a fresh Python
    # 3.11 venv's) can only do that with the wheel package
    probe = ("import importlib.util as u, sys; sys.exit(not (u.find_spec('wheel') or "
             "u.find_spec('setuptools.command.bdist_wheel')))")
    if run_logged([python, "-c", probe], log_path) != 0:
        run_logged([python, "-m", "pip", "install", "wheel"], log_path)
    code = run_logged([python, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                       "--no-binary", ":all:", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", cache_dir],
                      log_path)
    found = sorted(cache_dir.glob(f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"))
    if code != 0 or not found:
        raise FallbackError(
            f"downloading {SDIST_NAME}=={SDIST_VERSION} failed (pip exit {code}). "
            "Fix: check that PyPI is reachable and that torch imports in the environment "
            "(pip runs the sdist's setup.py, which imports torch)."
        )
    return found[0]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _apply_patches(pkg: Path) -> list:
    applied = []
    for patch in PATCHES:
        total = 0
        for f in sorted(pkg.glob(patch.files)):
            text = f.read_text()
            new, n = re.subn(patch.pattern, patch.replacement, text, flags=re.MULTILINE)
            if n:
                f.write_text(new)
                total += n
        if total < patch.min_count:
            raise FallbackError(
                f"compatibility patch '{patch.why}' matched {total} times, expected at least "
                f"{patch.min_count}: the sdist is not the one this installer was written for. "
                "Fix: update tools/install/detectron2_fallback.py (PATCHES)."
            )
        applied.append({"why": patch.why, "edits": total})
    return applied


def _assemble(sdist: Path, work: Path) -> Path:
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (root,) = [p for p in work.iterdir() if p.is_dir()]
    pkg = root / "detectron2"
    if not (pkg / "model_zoo" / "configs").is_dir():
        raise FallbackError(f"{sdist.name} has no detectron2/model_zoo/configs; wrong sdist?")
    for src, name in PROJECTS.items():
        shutil.copytree(root / src, pkg / "projects" / name)
    shutil.copyfile(STANDIN, pkg / "_C.py")
    return pkg


def _record_line(path: Path, site: Path) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=")
    return f"{path.relative_to(site).as_posix()},sha256={digest.decode()},{path.stat().st_size}"


def _write_dist_info(site: Path) -> None:
    info = site / f"detectron2-{SDIST_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: detectron2\nVersion: "
        f"{SDIST_VERSION}\nSummary: detectron2 v0.6 from the {SDIST_NAME} sdist, without the "
        "compiled extension (installed by this project's tools/install)\n"
    )
    (info / "INSTALLER").write_text("ssl2det-setup\n")
    (info / "top_level.txt").write_text("detectron2\n")
    files = [p for p in sorted((site / "detectron2").rglob("*")) if p.is_file()]
    files += [info / "METADATA", info / "INSTALLER", info / "top_level.txt"]
    lines = [_record_line(p, site) for p in files] + [f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(lines) + "\n")


def remove_installed(site: Path) -> None:
    """Remove a detectron2 package and its dist-info from site-packages (ours, or a broken one)."""
    for p in [site / "detectron2", *site.glob("detectron2-*.dist-info")]:
        if p.is_dir():
            shutil.rmtree(p)


def install(python: str, site: Path, cache_dir: Path, log_path: Path, search=None) -> dict:
    """Install the fallback into `site`; returns what was done (for the set-up report)."""
    sdist = download_sdist(python, cache_dir, log_path, search)
    with tempfile.TemporaryDirectory(dir=site, prefix=".detectron2-build-") as tmp:
        pkg = _assemble(sdist, Path(tmp))
        patches = _apply_patches(pkg)
        info = {"sdist": sdist.name, "sdist_sha256": _sha256(sdist),
                "patch_revision": PATCH_REVISION, "patches": patches}
        (pkg / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        # Build fully in a temporary folder on the same file system, then move into place, so an
        # interrupted install never leaves a half-copied package behind.
        remove_installed(site)
        pkg.rename(site / "detectron2")
    _write_dist_info(site)
    return info
