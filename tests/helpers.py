"""Helpers the test modules share: running a command line, reading a checkpoint, the one-line
error contract, waiting for a condition."""

import subprocess
import sys
import time

import torch


def run(cmd, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    """`cmd` (a list; a leading "python" stands for this interpreter) with its output kept."""
    cmd = [sys.executable if c == "python" else c for c in map(str, cmd)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


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
