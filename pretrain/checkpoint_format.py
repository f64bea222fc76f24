"""What a pretraining checkpoint of this project holds, for every reader of one: the resume
(pretrain/engine), the evaluation tools (pretrain/eval) and the converter (transfer/convert.py).

    {"model": Method.state_dict(), "optimizer": ..., "scaler": ..., "iteration": N,
     "run_state": {"meta": run_meta(cfg), "ranks": [RNG states]}}
"""

#: The kind of file (run_state.meta.format), checked by --resume and by the converter.
FORMAT = "ssl2det-pretrain"
VERSION = 1
#: Where the online encoder (a torchvision ResNet without fc) sits in the model's state dict.
ONLINE_ENCODER_PREFIX = "encoder."
#: Where a method's momentum (EMA) copy of the encoder sits, each method declares
#: (pretrain.methods.ema_encoder_prefixes()).


def run_meta(cfg) -> dict:
    """What a checkpoint says about the run that wrote it."""
    return {"format": FORMAT, "version": VERSION, "arch": cfg.MODEL.ARCH,
            "cifar_stem": cfg.MODEL.CIFAR_STEM, "method": cfg.METHOD.NAME}


def saved_meta(data: dict) -> dict:
    """The run meta of a loaded checkpoint dict ({} for a file of another kind)."""
    run_state = data.get("run_state")
    return run_state.get("meta", {}) if isinstance(run_state, dict) else {}
