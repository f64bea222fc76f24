"""The set-up step: imports, the detectron2 build it chose, idempotency, and that it never
installs the fallback over a compiled detectron2."""

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO
from helpers import run

SETUP = REPO / "tools" / "install" / "setup_env.py"
PROBE = REPO / "tools" / "install" / "probe.py"


def _fake_detectron2(root: Path, compiled: bool) -> Path:
    """A detectron2 package on a PYTHONPATH folder: with a `_C` that is not our stand-in
    (what a compiled build looks like to the installer), or with none (a broken build)."""
    pkg = root / "detectron2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "0.6"\n')
    if compiled:
        (pkg / "_C.py").write_text(
            "def get_compiler_version():\n    return 'GCC 12'\n"
            "def get_cuda_version():\n    return '12.1'\n")
    return pkg


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if "__pycache__" not in p.parts}


def _run(args, **kwargs):
    return run(["python", *args], timeout=600, **kwargs)


def test_packages_import_and_report():
    import detectron2  # noqa: F401
    import pretrain  # noqa: F401
    import transfer  # noqa: F401
    from ssl2det.environment import detectron2_build

    build, _ = detectron2_build()
    assert build in ("compiled", "fallback")
    out = _run([REPO / "tools" / "collect_env.py"], cwd=REPO)
    assert out.returncode == 0, out.stderr
    for name in ("torch", "torchvision", "detectron2", "devices"):
        assert any(line.startswith(name + " ") for line in out.stdout.splitlines()), out.stdout
    assert f"{build} build" in out.stdout


def test_fallback_has_no_names_removed_by_current_numpy_pillow_setuptools():
    from ssl2det.environment import detectron2_build
    import detectron2

    if detectron2_build()[0] != "fallback":
        pytest.skip("a compiled detectron2 is installed; the patches apply to the fallback only")
    import re

    removed = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?!\w)|\bImage\.LINEAR\b|"
                         r"^\s*import pkg_resources", re.MULTILINE)
    offenders = [f"{p}: {m.group(0)}" for p in Path(detectron2.__file__).parent.rglob("*.py")
                 for m in removed.finditer(p.read_text())]
    assert offenders == []
    # and the patched model zoo finds its configs without pkg_resources
    from detectron2 import model_zoo

    assert Path(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml")).is_file()


def test_standin_for_compiled_module_fails_clearly_when_called():
    from detectron2 import _C

    if not getattr(_C, "PROJECT_FALLBACK", False):
        pytest.skip("a compiled detectron2 is installed")
    with pytest.raises(NotImplementedError, match="compiled detectron2 extension"):
        _C.deform_conv_forward()
    assert "fallback" in _C.get_compiler_version()


def _setup_args(tmp_path):
    """Point setup_env.py at the environment running the tests, logging into tmp_path."""
    if sys.prefix != sys.base_prefix:  # a venv: check it exactly as `make install` does
        return [SETUP, "--venv", sys.prefix, "--state-dir", tmp_path, "--with-tests"]
    return [SETUP, "--python", sys.executable, "--state-dir", tmp_path, "--with-tests"]


def test_setup_second_run_changes_nothing(tmp_path):
    site = Path(json.loads(_run([PROBE]).stdout)["site_packages"])
    before = _snapshot(site / "detectron2")
    out = _run(_setup_args(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nothing to do" in out.stdout, out.stdout
    assert "installing" not in out.stdout, out.stdout
    assert _snapshot(site / "detectron2") == before


def test_setup_leaves_a_compiled_detectron2_alone(tmp_path):
    fake = _fake_detectron2(tmp_path / "elsewhere", compiled=True)
    site = Path(json.loads(_run([PROBE]).stdout)["site_packages"])
    before_fake, before_site = _snapshot(fake), _snapshot(site / "detectron2")
    env = {"PYTHONPATH": str(fake.parent), "PATH": "/usr/bin:/bin"}
    out = _run(_setup_args(tmp_path / "state"), env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"compiled detectron2 0.6 found at {fake}: leaving it alone" in out.stdout
    assert _snapshot(fake) == before_fake
    assert _snapshot(site / "detectron2") == before_site


def test_setup_refuses_a_broken_detectron2_that_would_hide_the_fallback(tmp_path):
    fake = _fake_detectron2(tmp_path / "elsewhere", compiled=False)
    env = {"PYTHONPATH": str(fake.parent), "PATH": "/usr/bin:/bin"}
    state = json.loads(_run([PROBE], env=env).stdout)
    assert state["detectron2"]["state"] == "broken"
    out = _run(_setup_args(tmp_path / "state"), env=env)
    assert out.returncode == 1
    assert "step 'detectron2' failed" in out.stderr
    assert str(fake) in out.stderr and "Fix: remove that folder from PYTHONPATH" in out.stderr
    assert "Traceback" not in out.stderr
