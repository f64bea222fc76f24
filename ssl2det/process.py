"""Child processes whose output goes to a log file: the one runner of the pipeline's stages,
the benchmark's sides and the set-up's pip calls; and children that do not outlive their
parent. Standard library only (the set-up uses it before the environment has anything else)."""

import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM, parent: int = None) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux; elsewhere a
    no-op). SIGTERM lets a training run write a checkpoint first. A worker whose launcher was
    killed (kill -9 of the pipeline or of torchrun's agent) would otherwise go on training as an
    orphan, writing into the folder the re-run uses. `parent`: the pid expected as parent (a
    child started from it may find it already gone)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), sig)


def start_logged(argv, log_path, env=None) -> subprocess.Popen:
    """Start `argv` with its output (stdout and stderr) appended to `log_path` by the child
    itself, unbuffered (PYTHONUNBUFFERED), after the command line; the child gets SIGTERM if
    this process dies."""
    argv = [str(a) for a in argv]
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=functools.partial(die_with_parent, parent=os.getpid()))


def run_logged(argv, log_path, echo=None, env=None) -> int:
    """Run `argv`, appending the command line and its output (stdout and stderr) to
    `log_path`, and handing each line to `echo` if given; returns the exit code. The child
    writes the log itself, unbuffered (PYTHONUNBUFFERED), so its last lines are there even when
    this process is killed (a pipe through this process would lose them); this process follows
    the file. The child gets SIGTERM if this process dies."""
    if echo is None:
        return start_logged(argv, log_path, env).wait()
    Path(log_path).touch()
    with open(log_path, errors="replace") as follow:
        follow.seek(0, os.SEEK_END)  # a resumed stage's log holds the earlier runs' lines
        proc = start_logged(argv, log_path, env)
        pending = ""
        while True:
            finished = proc.poll() is not None
            chunk = follow.read()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                echo(line + "\n")
            if finished and not chunk:
                if pending:
                    echo(pending)
                return proc.returncode
            if not chunk:
                time.sleep(0.1)


def log_tail(log_path, lines: int = 15) -> str:
    """The last `lines` lines of a log file."""
    return "".join(Path(log_path).read_text(errors="replace").splitlines(True)[-lines:])
