#!/usr/bin/env python
"""Turn COCO-format instance polygons into semantic label PNGs (0 = background, 1..K = the
categories in id order, 255 = crowd), plus classes.json, for tools/train_net.py --register-semseg.

    python tools/coco_to_semseg.py datasets/coco/annotations/instances_val2017.json \
        output/coco_val_semseg
"""

import argparse
import sys

from transfer.semseg_labels import coco_to_semseg

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file", help="COCO instances json")
    parser.add_argument("out_dir", help="folder for the label PNGs and classes.json")
    args = parser.parse_args()
    classes = coco_to_semseg(args.json_file, args.out_dir)
    print(f"wrote label PNGs for {len(classes) - 1} classes + background to {args.out_dir}")
    sys.exit(0)
