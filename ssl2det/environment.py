"""What this environment has: versions, the detectron2 build, and the devices seen."""

import os
import platform
import sys
from importlib import metadata


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def detectron2_build():
    """('compiled' | 'fallback' | 'missing' | 'broken', detail) for the importable detectron2."""
    try:
        import detectron2
    except ImportError as e:
        return "missing", str(e)
    where = os.path.dirname(detectron2.__file__)
    try:
        from detectron2 import _C
    except ImportError as e:
        return "broken", f"{where}: compiled extension does not import ({e})"
    if getattr(_C, "PROJECT_FALLBACK", False):
        return "fallback", f"{where} (no compiled extension: deformable conv, rotated boxes and " \
                           "the fast COCO evaluator are unavailable)"
    return "compiled", where


def devices():
    import torch

    found = [f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB, "
                         f"capability {p.major}.{p.minor})")
    return found


def collect_env():
    """Rows of (name, value) describing the environment."""
    import torch

    build, detail = detectron2_build()
    rows = [
        ("python", f"{sys.version.split()[0]} ({sys.executable})"),
        ("platform", platform.platform()),
        ("ssl2det", _version("ssl2det")),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
        ("torchvision", _version("torchvision")),
        ("detectron2", f"{_version('detectron2')}, {build} build: {detail}"),
    ]
    rows += [(name, _version(name)) for name in ("numpy", "Pillow", "fvcore", "iopath",
                                                  "pycocotools", "opencv-python-headless")]
    rows += [("devices", ", ".join(devices()))]
    return rows


def format_table(rows):
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
