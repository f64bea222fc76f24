"""Convert a pretraining checkpoint (this project's, a torchvision ResNet state dict, or a common
third-party layout: MoCo, BYOL, PyContrast with its `model_ema`) into detectron2's weight format
(`python -m transfer.convert IN OUT`, tools/convert_to_d2.py).

Rules (detectron2's ResNet names, as MoCo's converter maps them): strip the wrapper prefix; drop fc / projector / predictor /
decoder keys; `conv1` -> `stem.conv1`, `bn1` -> `stem.conv1.norm`, `layerN` -> `res{N+1}`,
`bnK` -> `convK.norm`, `downsample.0` -> `shortcut`, `downsample.1` -> `shortcut.norm`. The
result is detectron2's pickle `{"model": {name: ndarray}, "__author__", "matching_heuristics"}`,
so `DetectionCheckpointer` places `res5` in the backbone (FPN) or in the ROI head (C4) alike.
"""

import argparse
import os
import pickle
import re
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch

from pretrain.checkpoint_format import FORMAT, ONLINE_ENCODER_PREFIX, saved_meta
from pretrain.methods import ema_encoder_prefixes
from ssl2det.errors import UserError, one_line_errors
from ssl2det.io import CheckpointError, atomic_write, load_checkpoint_file

#: In checkpoints of other projects: words in the prefixes that hold a momentum / EMA copy of
#: the encoder (chosen with --ema). This project's own prefixes are known exactly.
EMA_HINTS = ("target", "momentum", "encoder_k", "key_encoder", "teacher", "ema")
ARCHS = {  # blocks per stage, and whether the blocks are bottlenecks (have conv3)
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
    "resnet101": ((3, 4, 23, 3), True),
    "resnet152": ((3, 8, 36, 3), True),
}


class ConversionError(UserError, ValueError):
    """The input cannot be converted; the message says why and what to do."""

    exit_code = 2


@dataclass
class Conversion:
    weights: dict  # detectron2 name -> tensor
    arch: str
    prefix: str
    source: str  # which layout was recognised
    dropped: Counter = field(default_factory=Counter)  # top-level name -> number of tensors

    def summary(self) -> str:
        dropped = ", ".join(f"{k}.* ({n})" for k, n in sorted(self.dropped.items())) or "none"
        return (f"{self.source}: {self.arch} backbone under prefix '{self.prefix}', "
                f"{len(self.weights)} tensors mapped; dropped: {dropped}")


def load_state_dict(path: str, ema: bool = False) -> tuple:
    """(state dict, layout name, whether it is this project's, whether it is already the EMA
    model) from a checkpoint file, loaded with weights_only=True."""
    try:
        data = load_checkpoint_file(path)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    meta = saved_meta(data)
    if meta.get("format") == FORMAT:
        return data["model"], f"ssl2det {meta.get('method')} checkpoint", True, False
    if ema and isinstance(data.get("model_ema"), dict):  # PyContrast keeps its EMA model whole
        return data["model_ema"], "PyContrast checkpoint, its 'model_ema'", False, True
    for key, layout in (("state_dict", "checkpoint with 'state_dict'"), ("model", "checkpoint "
                        "with 'model'"), ("online_network", "BYOL-style checkpoint")):
        if isinstance(data.get(key), dict):
            return data[key], layout, False, False
    return data, "plain state dict", False, False


def _candidate_prefixes(state):
    """Prefixes P such that P + 'conv1.weight' is a 3-input-channel 4-D convolution."""
    return [k[: -len("conv1.weight")] for k, v in state.items()
            if k.endswith("conv1.weight") and torch.is_tensor(v) and v.dim() == 4
            and v.shape[1] == 3 and "layer" not in k[: -len("conv1.weight")]]


def find_backbone_prefix(state, ema: bool, ours: bool = False) -> str:
    """Where the encoder to convert sits: in this project's checkpoints (`ours`) at the known
    prefixes (the methods declare theirs), elsewhere found by the names of its keys."""
    prefixes = _candidate_prefixes(state)
    if ours:
        known = ema_encoder_prefixes() if ema else (ONLINE_ENCODER_PREFIX,)
        prefixes = [p for p in prefixes if p in known] or prefixes
    if not prefixes:
        raise ConversionError("no ResNet backbone found: no key ends in 'conv1.weight' with a "
                              "3-channel 4-D kernel (expected torchvision ResNet names such as "
                              "'conv1.weight', 'layer1.0.conv1.weight', under any prefix)")
    is_ema = [any(h in p.lower() for h in EMA_HINTS) for p in prefixes]
    chosen = [p for p, e in zip(prefixes, is_ema) if e == ema]
    if not chosen:
        what = "momentum/EMA encoder (--ema)" if ema else "online encoder"
        raise ConversionError(f"the checkpoint has no {what}; backbones found under: "
                              f"{', '.join(repr(p) for p in prefixes)}")
    return min(chosen, key=len)  # e.g. 'encoder.' over 'encoder.some.nested.'


def infer_arch(backbone) -> str:
    blocks = tuple(len({k.split(".")[1] for k in backbone if k.startswith(f"layer{i}.")})
                   for i in range(1, 5))
    bottleneck = any(".conv3." in k for k in backbone)
    for arch, (layout, is_bottleneck) in ARCHS.items():
        if layout == blocks and is_bottleneck == bottleneck:
            return arch
    raise ConversionError(f"the backbone's stages have {blocks} "
                          f"{'bottleneck' if bottleneck else 'basic'} blocks: not a torchvision "
                          f"ResNet ({', '.join(ARCHS)})")


_RULES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.bn(\d)\.", lambda m: f".conv{m.group(1)}.norm."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
]


def torchvision_to_detectron2_name(name: str) -> str:
    for pattern, replacement in _RULES:
        name = re.sub(pattern, replacement, name)
    return name


def convert_state_dict(state, ema=False, source="state dict", ours=False) -> Conversion:
    prefix = find_backbone_prefix(state, ema, ours)
    backbone, dropped = {}, Counter()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):  # BN counters: detectron2 has none
            continue
        inner = key[len(prefix):] if key.startswith(prefix) else None
        if inner is None or inner.startswith("fc.") or not torch.is_tensor(value):
            dropped[f"{prefix}fc" if inner and inner.startswith("fc.") else key.split(".")[0]] += 1
            continue
        backbone[inner] = value
    arch = infer_arch(backbone)
    import torchvision  # here: the planner imports this module, and only converting needs it

    expected = {k: v.shape for k, v in getattr(torchvision.models, arch)().state_dict().items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(backbone))
    unexpected = sorted(set(backbone) - set(expected))
    wrong = [f"{k}: {tuple(backbone[k].shape)} vs {tuple(s)}" for k, s in expected.items()
             if k in backbone and backbone[k].shape != s]
    if backbone.get("conv1.weight") is not None and backbone["conv1.weight"].shape[-1] == 3:
        raise ConversionError(
            "the backbone has a CIFAR stem (3x3 first convolution, no max-pool); detectron2's "
            "ResNet stem is 7x7/2 + max-pool, so the weights would not transfer. Pretrain with "
            "MODEL.CIFAR_STEM False for detection.")
    if missing or unexpected or wrong:
        problems = ([f"missing: {', '.join(missing[:8])}"] if missing else []) + \
                   ([f"unexpected: {', '.join(unexpected[:8])}"] if unexpected else []) + \
                   ([f"shape mismatch: {'; '.join(wrong[:5])}"] if wrong else [])
        raise ConversionError(f"the backbone under '{prefix}' does not match torchvision's {arch}: "
                              + " | ".join(problems))
    broken = next((k for k, v in backbone.items() if v.is_floating_point()
                   and not torch.isfinite(v).all()), None)
    if broken:  # fine-tuning would start from it and blame "Training has diverged"
        count = int((~torch.isfinite(backbone[broken])).sum())
        raise ConversionError(f"the tensor {prefix}{broken} holds {count} NaN or infinite "
                              "value(s): the weights are damaged (a diverged run's checkpoint?)")
    weights = {torchvision_to_detectron2_name(k): v.detach().float() for k, v in backbone.items()}
    return Conversion(weights, arch, prefix, source, dropped)


def convert_checkpoint(path: str, ema: bool = False) -> Conversion:
    state, layout, ours, ema_taken = load_state_dict(path, ema)
    return convert_state_dict(state, ema and not ema_taken, layout, ours)


def finetune_keys(arch: str) -> str:
    """The config keys a converted backbone of `arch` needs in stage two."""
    depth = arch.removeprefix("resnet")
    if arch in ("resnet18", "resnet34"):
        return (f"MODEL.RESNETS.DEPTH {depth} MODEL.RESNETS.RES2_OUT_CHANNELS 64, with an FPN "
                "config: detectron2's basic-block ResNets have no C4 (res5) ROI head")
    return f"MODEL.RESNETS.DEPTH {depth}"


def check_output(source: str, path: str) -> None:
    """The output must be a new path or a regular file, and not the input: a conversion that
    replaced its input, or turned /dev/null or a pipe into a file, would destroy data."""
    try:
        same = os.path.lexists(path) and os.path.exists(source) and os.path.samefile(source, path)
    except OSError:  # a link in a loop: not the input, and refused as a link below
        same = False
    if same:
        raise ConversionError(f"the output {path} is the input; give another file name for the "
                              "detectron2 weights (the input would be lost)")
    if os.path.islink(path):
        raise ConversionError(f"the output {path} is a symbolic link (to "
                              f"{os.path.realpath(path)}); give a plain file name")
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise ConversionError(f"the output {path} is not a regular file (a device, pipe or "
                              "socket); give a plain file name")


def save_detectron2_weights(conversion: Conversion, path: str) -> None:
    """detectron2's pickle format, written atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConversionError(f"the output {path} is a folder; give a file name, e.g. "
                              f"{os.path.join(path, 'backbone_d2.pkl')}")
    if not os.path.isdir(folder):
        raise ConversionError(f"the output's folder {folder} does not exist; create it first")
    data = {"model": {k: v.numpy() for k, v in conversion.weights.items()},
            "__author__": f"ssl2det convert_to_d2 ({conversion.source}, {conversion.arch})",
            "matching_heuristics": True}
    atomic_write(path, lambda f: pickle.dump(data, f))


@one_line_errors
def main(argv=None, description=__doc__):
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="pretraining checkpoint (.pth / .pth.tar / .pt)")
    parser.add_argument("output", help="detectron2 weights to write (.pkl)")
    parser.add_argument("--ema", action="store_true",
                        help="take the momentum / EMA encoder (BYOL target, MoCo key encoder)")
    args = parser.parse_args(argv)
    check_output(args.input, args.output)
    conversion = convert_checkpoint(args.input, ema=args.ema)
    save_detectron2_weights(conversion, args.output)
    print(conversion.summary())
    print(f"wrote {args.output}; fine-tune with MODEL.WEIGHTS {args.output} "
          f"({finetune_keys(conversion.arch)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
