#!/usr/bin/env python
"""Convert a pretraining checkpoint to detectron2's weight format (.pkl).

    python tools/convert_to_d2.py output/simclr/model_final.pth output/simclr/r50_d2.pkl
    python tools/convert_to_d2.py moco_v2_200ep.pth.tar moco_d2.pkl          # third-party layouts
    python tools/convert_to_d2.py output/byol/model_final.pth byol_ema.pkl --ema

Reads this project's checkpoints, plain torchvision ResNet state dicts, and wrapped layouts
(MoCo's `module.encoder_q.`, `backbone.`, `encoder.` ...). Use the result with the configs in
configs/ (RGB input, torchvision mean/std, STRIDE_IN_1X1 False): MODEL.WEIGHTS path/to/out.pkl.
The same as `python -m transfer.convert` (transfer/convert.py).
"""

import sys

from transfer.convert import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
