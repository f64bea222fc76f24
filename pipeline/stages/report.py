"""`report`: the report from every other stage's outputs (`python -m pipeline.report`)."""

import sys
from pathlib import Path

from .base import Stage


class ReportStage(Stage):
    """The report (pipeline/report), made from every other stage's outputs, after all of them:
    `python -m pipeline.report RUN_FILE --output-dir ROOT`."""

    kind = "report"
    reruns_with_upstream = replaceable_when_queued = True

    def __init__(self, spec, stages):
        root = spec.layout.root
        super().__init__(root, "report", ("report",), record=root / "report.stage.json")
        self.spec, self.path = spec, spec.layout.report(spec.report_name)
        self.outputs = [self.path]
        self.stages = list(stages)

    @property
    def log_path(self) -> Path:  # the run's root folder holds the other stages' folders
        return self.folder / "report.log"

    def upstream_keys(self):
        return [stage.key for stage in self.stages]

    def is_complete(self):
        return self.path.is_file()

    def set_aside(self) -> list:
        return []  # its run rewrites the report whole

    def command(self, processes=1, launcher_flags=()):
        return [sys.executable, "-m", "pipeline.report", self.spec.layout.run_file,
                "--output-dir", self.spec.layout.root]

    def inputs(self, upstream):
        # (which stages are kept stale is not an input: the plan runs the report again
        # whenever one is, as when one runs)
        return {"stages": {"/".join(key): upstream[key] for key in self.upstream_keys()},
                "name": self.spec.report_name}

    @classmethod
    def build(cls, spec, earlier):
        return [cls(spec, earlier)]

