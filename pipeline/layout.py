"""Where a pipeline run keeps what each stage makes: the one place that spells the folder
names (the stages write there, the report and the study read from there).

    OUTPUT_DIR/pipeline.yaml                      the run file as given
    OUTPUT_DIR/pretrain/RUN/                      a pretraining run (model_final.pth, metrics.json)
    OUTPUT_DIR/convert/RUN.pkl                    its encoder in detectron2's format
    OUTPUT_DIR/probe/RUN/probe.json               kNN and linear-probe top-1 of its frozen encoder
    OUTPUT_DIR/finetune/TASK/BACKBONE/            a fine-tuning run (model_final.pth, metrics.json)
    OUTPUT_DIR/evaluate/TASK/BACKBONE/            its evaluation (final_metrics.json, predictions/)
    OUTPUT_DIR/KIND/NAME/.../                     a stage of any other kind (`stage`): e.g.
                                                  classify/SET/BACKBONE/ (classification.json)
    OUTPUT_DIR/REPORT.md, REPORT.html, REPORT_files/  REPORT: "report" unless the run file names it
"""

from dataclasses import dataclass
from pathlib import Path

RANDOM = "random"  # the backbone / probe name of a randomly initialised encoder
PROBE_RESULT = "probe.json"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def run_file(self) -> Path:
        return self.root / "pipeline.yaml"

    def pretrain(self, run: str) -> Path:
        return self.root / "pretrain" / run

    def pretrain_checkpoint(self, run: str) -> Path:
        return self.pretrain(run) / "model_final.pth"

    def converted(self, run: str) -> Path:
        return self.root / "convert" / f"{run}.pkl"

    def weights_for(self, backbone: str) -> str:
        """MODEL.WEIGHTS of a fine-tuning run from `backbone` ("" for a random one)."""
        return "" if backbone == RANDOM else str(self.converted(backbone))

    def probe(self, run: str) -> Path:
        return self.root / "probe" / run

    def probe_result(self, run: str) -> Path:
        return self.probe(run) / PROBE_RESULT

    def finetune(self, task: str, backbone: str) -> Path:
        return self.root / "finetune" / task / backbone

    def evaluate(self, task: str, backbone: str) -> Path:
        return self.root / "evaluate" / task / backbone

    def stage(self, kind: str, *names: str) -> Path:
        """The folder of a stage of `kind`, under its names (a new kind needs no method)."""
        return self.root.joinpath(kind, *names)

    def report(self, name: str = "report") -> Path:
        """The report's Markdown file; the HTML and the figures' folder sit beside it."""
        return self.root / f"{name}.md"

    def report_files(self, name: str = "report") -> Path:
        return self.root / f"{name}_files"
