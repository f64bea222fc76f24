#!/usr/bin/env python
"""Run the whole chain for one run file: pretrain -> convert -> fine-tune -> evaluate -> report.

    python tools/pipeline.py configs/pipeline/demo.yaml           # what `make demo` runs
    python tools/pipeline.py configs/pipeline/demo.yaml --output-dir output/demo2

Each stage works in its own folder under the run's output_dir. Running the same command again
skips finished stages and resumes an interrupted one. The report is OUTPUT_DIR/report.md and
OUTPUT_DIR/report.html. See transfer/pipeline.py for the run-file format; the same as
`python -m transfer.pipeline`.
"""

import sys

from transfer.pipeline import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
