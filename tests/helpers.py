"""Helpers the test modules share: running a command line, reading a checkpoint, the one-line
error contract, waiting for a condition."""

import contextlib
import io
import subprocess
import sys
import time
import traceback

import torch


def run(cmd, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    """`cmd` (a list; a leading "python" stands for this interpreter) with its output kept."""
    cmd = [sys.executable if c == "python" else c for c in map(str, cmd)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def call(main, argv) -> subprocess.CompletedProcess:
    """An entry point's `main(argv)` run in this process, seen as `run` sees its command: the
    exit code and what it printed. An exception that escapes `main` is printed as the
    interpreter would (a "Traceback"), so one_line_error holds it to the same contract; one
    subprocess per entry point (in its test file) checks what only a process shows."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else (e.code is not None)
        except Exception:  # noqa: BLE001 (the interpreter's own outcome, made visible)
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def one_line_error(result, code, *fragments) -> None:
    """The command failed with `code`, no traceback, and its error names every fragment."""
    assert result.returncode == code, (result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr[-3000:]


def wait_until(condition, what: str, timeout_s: float = 600) -> None:
    """Poll `condition` until it holds; a failure naming `what` after `timeout_s` (a bound on a
    hang, not a timing check: a loaded machine only waits longer)."""
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
