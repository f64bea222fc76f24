"""Stage two's checkpointer: detectron2's, with atomic saves, safe loads, fallback past damaged
checkpoints (ssl2det.checkpoint) and a report of missing weights a user can act on."""

import os
import re

from detectron2.checkpoint import DetectionCheckpointer

from ssl2det.checkpoint import AtomicSaveMixin
from ssl2det.io import CheckpointError, check_weights_pickle, load_checkpoint_file


#: The ResNet body's parameters (stem and res2-res5, in the backbone or, for C4, res5 in the ROI
#: head), which converted weights must fill; everything else (FPN, RPN, heads) may be new.
_BODY = re.compile(r"(^|\.)(stem|res[2-5])\.")


def is_body_key(key: str) -> bool:
    return bool(_BODY.search(key)) and not key.startswith("roi_heads.res5.norm")


def body_name(key: str) -> str:
    """The body parameter's name from its stage on: "res5.0.conv1.weight" for the backbone's
    and for a C4 ROI head's alike."""
    match = _BODY.search(key)
    return key[match.start(2):] if match else key


class TransferCheckpointer(AtomicSaveMixin, DetectionCheckpointer):
    """Saves atomically; loads safely (.pth with weights_only=True, .pkl only if it holds nothing
    but arrays), and a damaged newest checkpoint makes --resume fall back to the previous one
    (AtomicSaveMixin). Says which missing parameters are expected (new heads) and which mean a
    broken conversion (backbone), and names tensors skipped for their shape, instead of
    detectron2's undifferentiated warning. Continuing a run (--resume) or evaluating a trained
    model (`complete`), the checkpoint must fit the model entirely."""

    def _load_file(self, filename):
        if not os.path.isfile(filename):  # URLs, detectron2:// and other schemes
            return super()._load_file(filename)
        if filename.endswith(".pkl"):
            check_weights_pickle(filename)  # before detectron2's plain pickle.load
            return super()._load_file(filename)
        loaded = load_checkpoint_file(filename)
        return loaded if "model" in loaded else {"model": loaded}

    def __init__(self, *args, complete: bool = False, **kwargs):
        """complete: the weights must fill the model entirely (a trained model evaluated with
        --eval-only): a missing, unexpected or differently shaped tensor is an error."""
        super().__init__(*args, **kwargs)
        self.complete = complete

    def _load_model(self, checkpoint):
        # the shapes as saved: detectron2's name matching drops a tensor of another shape
        # as "missing", and the mismatch is worth naming
        self._saved_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in
                              checkpoint.get("model", {}).items()}
        return super()._load_model(checkpoint)

    def _log_incompatible_keys(self, incompatible):
        wrong = [f"{k} {tuple(saved)} vs {tuple(model)}"
                 for k, saved, model in incompatible.incorrect_shapes]
        if not (self.complete or self.resuming):  # weights to fine-tune from: the body must fit
            self._check_body(incompatible)
        if self.complete or self.resuming:
            problems = ([f"missing {', '.join(incompatible.missing_keys[:8])}"]
                        if incompatible.missing_keys else []) + (
                [f"unexpected {', '.join(incompatible.unexpected_keys[:8])}"]
                if self.complete and incompatible.unexpected_keys else []) + (
                [f"other shapes: {'; '.join(wrong[:8])}"] if wrong else [])
            if problems:
                fix = ("--resume continues a run: use that run's config, or a new OUTPUT_DIR."
                       if self.resuming else "A trained model must load completely: use the "
                       "config it was trained with.")
                raise CheckpointError(f"the checkpoint does not fit this model (the config "
                                      f"differs: classes, depth, heads): {' | '.join(problems)}. "
                                      + fix)
        if wrong:
            self.logger.warning(
                f"{len(wrong)} tensors of the weights were NOT loaded, their shapes differ from "
                f"the model's: {'; '.join(wrong[:5])}. Expected for a head with another number "
                "of classes; otherwise the config and the weights do not match.")
        heads = [k for k in incompatible.missing_keys if not is_body_key(k)]
        if heads:
            groups = sorted({".".join(k.split(".")[:2]) for k in heads})
            self.logger.info(f"{len(heads)} head parameters start from scratch, as expected for "
                             f"converted backbone weights: {', '.join(groups)}")
        if incompatible.unexpected_keys:
            self.logger.info(f"ignored {len(incompatible.unexpected_keys)} checkpoint tensors "
                             f"that the model has no place for (e.g. "
                             f"{', '.join(incompatible.unexpected_keys[:3])})")

    def _check_body(self, incompatible):
        """Weights a fine-tuning starts from must fill the ResNet body, with its shapes: a
        ResNet-18 file under a ResNet-50 config would otherwise train a mostly random body and
        report numbers. A CheckpointError naming the mismatch, before any training."""
        model = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        saved = {body_name(k): shape for k, shape in getattr(self, "_saved_shapes", {}).items()
                 if is_body_key(k)}
        missing = [k for k in incompatible.missing_keys if is_body_key(k)]
        wrong = [(k, saved, shape) for k, saved, shape in incompatible.incorrect_shapes
                 if is_body_key(k)]
        wrong += [(k, saved[body_name(k)], model[k]) for k in missing
                  if body_name(k) in saved and saved[body_name(k)] != model.get(k)]
        missing = [k for k in missing if body_name(k) not in saved]
        wrong = [f"{k} {tuple(a)} in the weights vs {tuple(b)} in the model" for k, a, b in wrong]
        if not (missing or wrong):
            return
        problems = ([f"other shapes: {'; '.join(wrong[:3])}"] if wrong else []) + (
            [f"missing {len(missing)} body tensors, e.g. {', '.join(missing[:3])}"]
            if missing else [])
        raise CheckpointError(
            f"the weights do not fit this model's ResNet body ({' | '.join(problems)}): they "
            "are of another architecture than the config builds (MODEL.RESNETS.DEPTH "
            "and RES2_OUT_CHANNELS: 64 for ResNet-18/34, 256 for ResNet-50/101), or the "
            "conversion is broken. Use the config of the weights' depth (tools/convert_to_d2.py "
            "prints it), or weights of this depth.")
