#!/usr/bin/env python
"""Run the whole chain for one run file: pretrain -> convert -> fine-tune -> evaluate -> report.

    python tools/pipeline.py configs/pipeline/demo.yaml           # what `make demo` runs
    python tools/pipeline.py configs/pipeline/demo.yaml --output-dir output/demo2

Each stage works in its own folder under the run's output_dir. Running the same command again
skips finished stages and resumes an interrupted one. The report is OUTPUT_DIR/report.md and
OUTPUT_DIR/report.html. See transfer/pipeline.py for the run-file format.
"""

import argparse
import sys

import _toolpath  # noqa: F401  (must come before `import pretrain`: see tools/_toolpath.py)
from transfer.pipeline import PipelineError, load_spec, run_pipeline

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_file", help="pipeline YAML (e.g. configs/pipeline/demo.yaml)")
    parser.add_argument("--output-dir", help="overrides the run file's output_dir")
    args = parser.parse_args()
    try:
        run_pipeline(load_spec(args.run_file, args.output_dir))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
