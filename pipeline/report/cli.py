"""The report stage's command: `python -m pipeline.report RUN_FILE [--output-dir DIR]` writes
the report from the stages' outputs as they are (the pipeline runs it as its last stage, on
every executor; by hand it redraws a report without running anything)."""

import argparse

from ssl2det.errors import one_line_errors

from ..spec import load_spec
from ..stages import build_stages, fingerprints, stale_stages
from .render import write_report


@one_line_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_file", help="the pipeline's run file")
    parser.add_argument("--output-dir", help="overrides the run file's output_dir")
    args = parser.parse_args(argv)
    spec = load_spec(args.run_file, args.output_dir)
    *stages, this = build_stages(spec)  # the report is the last stage: this one
    path = write_report(spec, stale_stages(stages, fingerprints([*stages, this])), stages)
    print(f"report: {path}")
    return 0
