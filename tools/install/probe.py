"""Report the state of a Python environment as JSON (run *inside* that environment).

Used by setup_env.py to decide which set-up steps still have work to do, so a second
`make install` only probes and changes nothing. Usage: python probe.py REQUIREMENTS_FILE...
"""

import importlib.metadata as md
import json
import sys
import sysconfig
from pathlib import Path


def _requirement_lines(paths):
    for path in paths:
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                yield line


def unsatisfied_requirements(paths):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # every venv has pip, which vendors packaging
        from pip._vendor.packaging.requirements import Requirement
    missing = []
    for line in _requirement_lines(paths):
        req = Requirement(line)
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            missing.append(line)
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            # local build tags (2.14.1+cu130) still satisfy ==2.14.1
            if not req.specifier.contains(version.split("+")[0], prereleases=True):
                missing.append(f"{line} (have {version})")
    return missing


def torch_state():
    try:
        import torch
        import torchvision
        from torchvision.ops import nms

        nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # fails when torch/torchvision mismatch
        return {"torch": torch.__version__, "torchvision": torchvision.__version__, "ok": True}
    except Exception as e:  # report any breakage: the installer repairs it
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def detectron2_state():
    """'missing', 'compiled', 'fallback' (ours) or 'broken' (importable, no working _C)."""
    try:
        import detectron2
    except Exception as e:
        return {"state": "missing", "error": f"{type(e).__name__}: {e}"}
    where = str(Path(detectron2.__file__).parent)
    try:
        from detectron2 import _C
    except Exception as e:
        return {"state": "broken", "path": where, "error": f"{type(e).__name__}: {e}"}
    if getattr(_C, "PROJECT_FALLBACK", False):
        info_file = Path(where) / "_fallback_info.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        return {"state": "fallback", "path": where, "version": detectron2.__version__,
                "patch_revision": info.get("patch_revision")}
    return {"state": "compiled", "path": where, "version": detectron2.__version__}


def project_state():
    try:
        dist = md.distribution("ssl2det")
    except md.PackageNotFoundError:
        return {"installed": False}
    url = json.loads(dist.read_text("direct_url.json") or "{}")
    return {"installed": True, "url": url.get("url"),
            "editable": url.get("dir_info", {}).get("editable", False)}


if __name__ == "__main__":
    print(json.dumps({
        "python": sys.executable,
        "version": sys.version.split()[0],
        "site_packages": sysconfig.get_paths()["purelib"],
        "torch": torch_state(),
        "detectron2": detectron2_state(),
        "project": project_state(),
        "unsatisfied": unsatisfied_requirements(sys.argv[1:]),
    }))
