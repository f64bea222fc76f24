#!/usr/bin/env python
"""Convert a pretraining checkpoint to detectron2's weight format (.pkl).

    python tools/convert_to_d2.py output/simclr/model_final.pth output/simclr/r50_d2.pkl
    python tools/convert_to_d2.py moco_v2_200ep.pth.tar moco_d2.pkl          # third-party layouts
    python tools/convert_to_d2.py output/byol/model_final.pth byol_ema.pkl --ema

Reads this project's checkpoints, plain torchvision ResNet state dicts, and wrapped layouts
(MoCo's `module.encoder_q.`, `backbone.`, `encoder.` ...). Use the result with the configs in
configs/ (RGB input, torchvision mean/std, STRIDE_IN_1X1 False): MODEL.WEIGHTS path/to/out.pkl.
"""

import argparse
import sys

import _toolpath  # noqa: F401  (must come before `import pretrain`: see tools/_toolpath.py)
from transfer.convert import ConversionError, convert_checkpoint, save_detectron2_weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="pretraining checkpoint (.pth / .pth.tar / .pt)")
    parser.add_argument("output", help="detectron2 weights to write (.pkl)")
    parser.add_argument("--ema", action="store_true",
                        help="take the momentum / EMA encoder (BYOL target, MoCo key encoder)")
    args = parser.parse_args(argv)
    try:
        conversion = convert_checkpoint(args.input, ema=args.ema)
        save_detectron2_weights(conversion, args.output)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(conversion.summary())
    print(f"wrote {args.output}; fine-tune with MODEL.WEIGHTS {args.output} "
          f"(MODEL.RESNETS.DEPTH {conversion.arch.removeprefix('resnet')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
