"""Child processes whose output goes to a log file: the one runner of the pipeline's stages,
the benchmark's sides and the set-up's pip calls. Standard library only (the set-up uses it
before the environment has anything else)."""

import subprocess
from pathlib import Path


def run_logged(argv, log_path, echo=None, env=None) -> int:
    """Run `argv`, appending the command line and its output (stdout and stderr, line by line)
    to `log_path`, and handing each line to `echo` if given; returns the exit code."""
    argv = [str(a) for a in argv]
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if echo:
                echo(line)
        return proc.wait()


def log_tail(log_path, lines: int = 15) -> str:
    """The last `lines` lines of a log file."""
    return "".join(Path(log_path).read_text(errors="replace").splitlines(True)[-lines:])
