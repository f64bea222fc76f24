"""What a pretraining run's steps compute in on this machine, and its record.

The precision (SOLVER.AMP, granted only where the device computes the 16-bit type) and the
memory format (MODEL.CHANNELS_LAST, by a rule when unset) are chosen by ssl2det.precision, the
same way on every run on one kind of machine; here the run takes them, says them in one line
and keeps them in OUTPUT_DIR/scale.json under "arithmetic", one entry per stretch of
iterations. A resume on another kind of machine (an AMX CPU's run resumed on an AVX2 one) may
change them: the log says so, and a second entry records from which iteration.
"""

import json
import logging
import os

from ssl2det.io import atomic_write
from ssl2det.precision import Precision, choose_channels_last, choose_precision

logger = logging.getLogger("pretrain")

SCALE_FILE = "scale.json"


def read_scale(output_dir: str) -> dict:
    """The scale.json a run left in `output_dir` ({} if none, or unreadable)."""
    try:
        with open(os.path.join(output_dir, SCALE_FILE)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def choose_arithmetic(cfg, device) -> dict:
    """{"precision": Precision, "channels_last": bool, "why": str} for this run."""
    amp = cfg.SOLVER.AMP
    precision = choose_precision(device, amp.ENABLED, amp.DTYPE, amp.FORCE)
    stem_stride = cfg.MODEL.STEM_STRIDE if cfg.MODEL.CIFAR_STEM else 4
    channels_last, why = choose_channels_last(device, cfg.MODEL.CHANNELS_LAST, precision,
                                              cfg.INPUT.SIZE // stem_stride)
    fell_back = precision.autocast is None and amp.ENABLED
    if fell_back:
        logger.warning(precision.why)
    logger.info(f"steps in {precision.name} on {precision.device}"
                + ("" if fell_back else f" ({precision.why})") + "; memory format "
                f"{'channels_last' if channels_last else 'contiguous'} ({why})")
    return {"precision": precision, "channels_last": channels_last, "why": why}


def record_arithmetic(output_dir: str, arithmetic: dict, start_iter: int,
                      previous: dict) -> list:
    """Write scale.json's "arithmetic": the resumed run's stretches, and this one's from
    `start_iter` when it differs from the last (said in a warning). Rank 0 only."""
    precision: Precision = arithmetic["precision"]
    entry = {"from_iteration": start_iter, **precision.record(),
             "channels_last": arithmetic["channels_last"]}
    history = list(previous.get("arithmetic") or []) if start_iter > 0 else []
    last = history[-1] if history else None
    if last and (last.get("precision"), last.get("device")) != (precision.name, precision.device):
        logger.warning(
            f"iterations {last.get('from_iteration', 0)}-{start_iter - 1} ran in "
            f"{last.get('precision')} on {last.get('device')}; from iteration {start_iter} this "
            f"run computes in {precision.name} on {precision.device} ({precision.why}). It "
            "continues from the checkpoint, but no longer computes as the earlier iterations "
            "did (not bit for bit an uninterrupted run); scale.json records both.")
    if not last or {k: last.get(k) for k in entry if k != "from_iteration"} != \
            {k: v for k, v in entry.items() if k != "from_iteration"}:
        history.append(entry)
    scale = read_scale(output_dir)
    scale["arithmetic"] = history
    text = json.dumps(scale, indent=1)
    atomic_write(os.path.join(output_dir, SCALE_FILE), lambda f: f.write(text.encode()))
    return history
