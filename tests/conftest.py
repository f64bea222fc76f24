"""Shared test fixtures: paths to the repository and to the real data sets in ../shared/data."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL2DET_SHARED_DATA", REPO.parent / "shared" / "data"))

# One torch thread per process. The suite runs in three xdist workers (pytest.ini) on two cores;
# each test's processes with an intra-op pool of their own would oversubscribe them, and tiny
# models' ops then wait on a descheduled thread (measured on 3 of the test files: 102 s in two
# workers at the default threads, no faster than one worker; 76 s at one thread). Set before
# any test imports torch, and inherited by every process a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# detectron2 resolves its builtin data sets (coco_2017_train, ...) from this variable when
# detectron2.data is first imported, so it is set before any test imports detectron2.
os.environ["DETECTRON2_DATASETS"] = str(SHARED_DATA / "detectron2")


#: the files whose tests take longest (measured together: 364 s down to 45 s here), handed to
#: the three xdist workers first (each file goes to one worker, pytest.ini) so that the short
#: ones fill in beside them and all end together, instead of one waiting for a long file at the
#: end
LONG_FILES = ("test_slurm.py", "test_pipeline.py", "test_reliability.py", "test_study.py",
              "test_device.py", "test_misuse.py", "test_transfer.py", "test_archives.py",
              "test_readme.py", "test_pretrain_engine.py", "test_run_file.py",
              "test_downstream.py", "test_objectives.py")


def pytest_collection_modifyitems(items):
    """The LONG_FILES first, in that order; every other file, and each file's tests, as
    collected."""
    def rank(item):
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)


def kill_processes_naming(path) -> None:
    """SIGKILL every process (but this one) whose command line names `path`."""
    needle = str(path).encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            named = needle in (proc / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if named and int(proc.name) != os.getpid():
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(request):
    """A test that stops midway (a failed assert, a timeout) can leave a training it started
    running on: it would fill the disk with checkpoints and take the cores from every later
    test. After each test that has a folder, what still runs from that folder is killed (before
    pytest removes the folder)."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        kill_processes_naming(folder)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; skipped where it is absent, but in CI (CI=true) its absence fails."""
    if not (SHARED_DATA / "README.md").is_file():
        message = (f"shared data not found at {SHARED_DATA}; set SSL2DET_SHARED_DATA to the "
                   "folder that holds cifar10-small/, detectron2/, raccoon-voc/ ...")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder on a read-only file system (a tmpfs mounted ro): root writes through permission
    bits, not through this. Skipped, saying so, where mounting is not allowed (CI runs as root
    and mounts, so there it always runs)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        if os.environ.get("CI"):
            pytest.fail("cannot mount a read-only tmpfs, which CI (root) must be able to")
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory):
    """The tiny pipeline (tests/tiny_pipeline.py) run once on this machine: (its folder, the
    run file, its stdout), for the end-to-end test, which goes on to change the folder."""
    from tiny_pipeline import run_pipeline, tiny_spec, write_run_file

    folder = tmp_path_factory.mktemp("tiny_local")
    out = folder / "run"
    run_file = write_run_file(folder / "run.yaml", tiny_spec(folder, out))
    return out, run_file, run_pipeline(run_file)


def slurm_answers() -> bool:
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0 \
        if shutil.which("sinfo") else False


@pytest.fixture(scope="session")
def slurm_cluster():
    """A SLURM cluster answering here; skipped with the command that starts the one-node test
    cluster where none does, a failure in CI (.ci/run starts it)."""
    if not slurm_answers():
        message = ("no SLURM cluster answers (sinfo): start the one-node test cluster with "
                   "`sudo bash tools/slurm/local_cluster.sh start`")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
