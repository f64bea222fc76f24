"""Stage two's checkpointer: detectron2's, with atomic saves, safe loads, fallback past damaged
checkpoints (ssl2det.checkpoint) and a report of missing weights a user can act on."""

import os

from detectron2.checkpoint import DetectionCheckpointer

from ssl2det.checkpoint import AtomicSaveMixin
from ssl2det.io import CheckpointError, check_weights_pickle, load_checkpoint_file


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

    def _log_incompatible_keys(self, incompatible):
        wrong = [f"{k} {tuple(saved)} vs {tuple(model)}"
                 for k, saved, model in incompatible.incorrect_shapes]
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
        backbone = [k for k in incompatible.missing_keys
                    if k.startswith("backbone.") or (k.startswith("roi_heads.res5.")
                                                     and not k.startswith("roi_heads.res5.norm"))]
        heads = [k for k in incompatible.missing_keys if k not in backbone]
        if heads:
            groups = sorted({".".join(k.split(".")[:2]) for k in heads})
            self.logger.info(f"{len(heads)} head parameters start from scratch, as expected for "
                             f"converted backbone weights: {', '.join(groups)}")
        if backbone:
            self.logger.warning(
                f"{len(backbone)} BACKBONE parameters are missing from the checkpoint, e.g. "
                f"{', '.join(backbone[:5])}. The conversion is broken or the checkpoint is for "
                "another architecture: re-run tools/convert_to_d2.py and check its report.")
        if incompatible.unexpected_keys:
            self.logger.info(f"ignored {len(incompatible.unexpected_keys)} checkpoint tensors "
                             f"that the model has no place for (e.g. "
                             f"{', '.join(incompatible.unexpected_keys[:3])})")
