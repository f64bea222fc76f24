"""`convert`: a pretraining run's encoder, or an external backbone's file, in detectron2's
format (`python -m transfer.convert`)."""

import os
import sys
from pathlib import Path

from .base import Stage
from .pretrain import PretrainStage


class ConvertStage(Stage):
    """A pretraining run's encoder, or an external backbone's file, in detectron2's format."""

    kind = "convert"

    def __init__(self, spec, name: str, source: Path, upstream_key=None):
        self.target = spec.layout.converted(name)
        super().__init__(self.target.parent, f"convert {name}", ("convert", name),
                         record=self.target.with_suffix(".stage.json"))
        self.outputs = [self.target]
        self.name, self.source, self.upstream_key = name, source, upstream_key

    @property
    def log_path(self) -> Path:  # conversions share a folder, and may run at once (SLURM)
        return self.target.with_suffix(".log")

    def upstream_keys(self):
        return [self.upstream_key] if self.upstream_key else []

    def is_complete(self):
        return self.target.is_file()

    def command(self, processes=1, launcher_flags=()):
        return [sys.executable, "-m", "transfer.convert", self.source, self.target]

    def inputs(self, upstream):
        if self.upstream_key:
            return {"pretrain": upstream[self.upstream_key]}
        try:  # a file the user gave: its path, size and time stand for its content
            stat = os.stat(self.source)
            return {"file": str(self.source), "size": stat.st_size, "mtime": stat.st_mtime_ns}
        except OSError:
            return {"file": str(self.source)}

    @classmethod
    def build(cls, spec, earlier):
        used = {spec.backbone_replicate(b, k) for task in spec.transfer for b in task.backbones
                for k in range(task.repeats)}
        ours = [cls(spec, p.name, spec.layout.pretrain_checkpoint(p.name), p.key)
                for p in earlier if isinstance(p, PretrainStage) and p.name in used]
        return ours + [cls(spec, b.name, Path(b.weights)) for b in spec.external.values()
                       if b.name in used and not b.is_detectron2]

    def problems(self, checks):
        # a pretraining's encoder is checked with its config; a file the user gave, opened here
        return [] if self.upstream_key else [checks.weights_arch(self.name, self.source)]

