#!/usr/bin/env python
"""Write WebDataset shards (KEY.jpg + KEY.cls, in the source's sorted order) from an image folder
or ImageNet's training archive; pretraining then reads them by index with DATA.ROOT
'OUT/shard-{000000..000146}.tar'. A cut-off run, started again, keeps its whole shards.

    python tools/make_shards.py /data/imagenet/train /scratch/imagenet-shards
    python tools/make_shards.py ILSVRC2012_img_train.tar shards/ --images-per-shard 2000

The same as `python -m pretrain.make_shards` (pretrain/make_shards.py).
"""

import sys

from pretrain.make_shards import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
