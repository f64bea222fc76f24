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


def cpu_model() -> str:
    """The CPU's name as the OS reports it (Linux's /proc/cpuinfo; elsewhere platform's)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def arithmetic_rows():
    """The CPU's instruction set as torch and oneDNN use it, and what SOLVER.AMP (bfloat16, the
    configs' choice) becomes on each device seen."""
    import torch

    from .precision import choose_precision, cpu_isa

    caps = [f"torch capability {torch.backends.cpu.get_cpu_capability()}"]
    for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        if os.environ.get(name):
            caps.append(f"{name}={os.environ[name]}")
    rows = [("cpu", f"{cpu_model()}, instruction set {cpu_isa()} ({', '.join(caps)})")]
    devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available()
                                       else [])
    for device in devices:
        precision = choose_precision(device, True, "bfloat16")
        rows.append((f"AMP on {device.type}", f"{precision.name}: {precision.why}"))
    return rows


def git_commit(folder=None) -> str:
    """The commit of the checkout this code runs from, "+ local changes" when it has some, or
    "not a git checkout"."""
    import subprocess

    folder = folder or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, text=True,
                                capture_output=True, timeout=10)
        if commit.returncode:
            return "not a git checkout"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=folder, text=True, capture_output=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not found)"
    return commit.stdout.strip() + (" + local changes" if dirty.strip() else "")


def collect_env():
    """Rows of (name, value) describing the environment."""
    import torch

    build, detail = detectron2_build()
    rows = [
        ("python", f"{sys.version.split()[0]} ({sys.executable})"),
        ("platform", platform.platform()),
        ("ssl2det", f"{_version('ssl2det')}, commit {git_commit()}"),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})"),
        ("torchvision", _version("torchvision")),
        ("detectron2", f"{_version('detectron2')}, {build} build: {detail}"),
    ]
    rows += [(name, _version(name)) for name in ("numpy", "Pillow", "fvcore", "iopath",
                                                  "pycocotools", "opencv-python-headless")]
    rows += [("devices", ", ".join(devices()))]
    return rows + arithmetic_rows()


def format_table(rows):
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
