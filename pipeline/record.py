"""A stage's record, `stage.json` beside its outputs: the one reader and the one writer.

What it holds: `hash` (of the inputs the outputs are made from), `command`, `config` (the
effective config, as text), `run` (where the stage's last run went: `{"executor": NAME, "id":
JOB}`, written by the executor that started it), and once a run has ended `seconds`,
`started`, `finished`, or `exit` with the failing run's exit code.

A record is data a person, a crash or a full disk may have damaged: one that is not a JSON
object is named once and treated as no record of this run's inputs, so the stage runs again
(its outputs are set aside first, like any stale stage's), and never as "complete and current".
"""

import errno
import json
import os
import sys
from pathlib import Path

from ssl2det.io import atomic_write

#: the hash a damaged record stands for: it matches no inputs, so the stage runs again
DAMAGED = "damaged"


def run_of(record: dict) -> dict:
    """The `run` of a record as read: {"executor": NAME, "id": ID}, {} for none."""
    run = record.get("run")
    return run if isinstance(run, dict) and run.get("executor") else {}


class StageRecord:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._warned = False

    def read(self) -> dict:
        """The record ({} when there is none); a damaged one reads as {"hash": DAMAGED}."""
        try:
            text = self.path.read_text()
        except (FileNotFoundError, NotADirectoryError):  # (no run yet; output_dir a file: the
            return {}                                     # pre-flight names that)
        except UnicodeDecodeError as e:
            return self._damaged(str(e))
        except OSError as e:
            if e.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES):
                raise  # the path is wrong, not the record: the entry point names it
            return self._damaged(str(e))
        try:
            record = json.loads(text)
        except ValueError as e:
            return self._damaged(f"not JSON ({e})")
        if not isinstance(record, dict):
            return self._damaged(f"a JSON {type(record).__name__}, not an object")
        return record

    def _damaged(self, why: str) -> dict:
        if not self._warned:
            self._warned = True
            print(f"[pipeline] damaged record {self.path}: {why}; the stage will run again",
                  file=sys.stderr, flush=True)
        return {"hash": DAMAGED}

    @property
    def hash(self):
        return self.read().get("hash")

    @property
    def run(self) -> dict:
        """{"executor": NAME, "id": ID} of the stage's last run ({} for none)."""
        return run_of(self.read())

    def write(self, **values) -> None:
        """A new record: `values` replace whatever the old one held."""
        self._write(values)

    def update(self, **values) -> None:
        """The record with `values` added (a run's end: its time or its exit code)."""
        record = self.read()
        if "seconds" in values:  # a run that succeeded after a failed one
            record.pop("exit", None)
        self._write({**record, **values})

    def _write(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(record, indent=1, default=str)
        atomic_write(os.fspath(self.path), lambda f: f.write(text.encode()))
