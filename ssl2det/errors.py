"""The errors a user can fix. Each message names the file, key or value and the fix; the
command-line entry points print it as one line, `error: ...`, and exit with the error's
`exit_code` (no traceback)."""

import errno
import functools
import sys


class UserError(Exception):
    """Base of the project's user-facing errors. exit_code 2: the input is wrong (a config, an
    argument, a file given); 1: the run failed (an unreadable image, a NaN loss, a lost peer)."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A bad config file, key or value, or a bad command-line argument."""

    exit_code = 2


class DatasetError(UserError, RuntimeError):
    """A data folder or file that cannot be used."""


def user_message(error: BaseException) -> str:
    """The message of an error, also when a DataLoader worker re-raised it with the worker's
    traceback folded into the text."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


#: The exit code of a run stopped by Ctrl-C (the shells' 128 + SIGINT)
INTERRUPTED = 130
#: The exit code of a run stopped by a preemption signal after its checkpoint was written
#: (sysexits' EX_TEMPFAIL: the same command with --resume continues). Not 1, so that a job's
#: wrapper (pipeline/executors/slurm.py) can tell a stop it will requeue from a failure.
PREEMPTED = 75


#: errors of a path that is wrong as given (bad input: exit 2), not of a run that failed
_BAD_PATH = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENOENT}

#: what Ctrl-C of a training entry point says
RESUME_AFTER_INTERRUPT = ("nothing written is damaged; the same command with --resume (the "
                          "pipeline: the same command) continues from the last checkpoint")


def one_line_errors(main=None, *, after_interrupt: str = RESUME_AFTER_INTERRUPT):
    """For an entry point `main(...) -> exit code`: a UserError it raises is printed as one
    line, `error: MESSAGE`, on stderr, and its exit_code returned, instead of a traceback; so is
    Ctrl-C (exit 130), with `after_interrupt`: how this command continues. Used bare
    (`@one_line_errors`) or with the keyword (`@one_line_errors(after_interrupt=...)`)."""
    if main is None:
        return functools.partial(one_line_errors, after_interrupt=after_interrupt)

    @functools.wraps(main)
    def entry_point(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {user_message(e)}", file=sys.stderr)
            return e.exit_code
        except OSError as e:
            if e.filename is None:  # (not about a path: a fault to see whole)
                raise
            # a path the user gave that the system refuses (too long, a loop of links, no
            # permission, a full disk): its name and the system's reason, not a traceback
            where = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
            print(f"error: {where}: {e.strerror or e}", file=sys.stderr)
            return 2 if e.errno in _BAD_PATH else 1
        except KeyboardInterrupt:
            print(f"interrupted (Ctrl-C): {after_interrupt}", file=sys.stderr)
            return INTERRUPTED

    return entry_point
