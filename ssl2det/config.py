"""What both stages' configs (fvcore / detectron2 CfgNode) share: keys written as dotted paths."""


def get_key(cfg, dotted: str):
    """cfg["A"]["B"]["C"] for "A.B.C"."""
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_key(cfg, dotted: str, value) -> None:
    """cfg["A"]["B"]["C"] = value for "A.B.C"."""
    parent, _, last = dotted.rpartition(".")
    (get_key(cfg, parent) if parent else cfg)[last] = value
