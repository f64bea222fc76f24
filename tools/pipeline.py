#!/usr/bin/env python
"""Run the whole chain for one run file: pretrain -> convert -> fine-tune -> evaluate -> report.

    python tools/pipeline.py configs/pipeline/demo.yaml           # what `make demo` runs
    python tools/pipeline.py configs/pipeline/demo.yaml --output-dir output/demo2

Each stage works in its own folder under the run's output_dir. Running the same command again
skips finished stages and resumes an interrupted one. The report is OUTPUT_DIR/report.md and
OUTPUT_DIR/report.html. See pipeline/cli.py for the run-file format; the same as
`python -m pipeline.cli`.
"""

import sys
from pathlib import Path

# Python puts this script's folder first on the path, where this file would stand for the
# package of the same name
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
