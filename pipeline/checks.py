"""What the stages' pre-flight checks share (pipeline/preflight.py asks every stage for its
problems, `Stage.problems(checks)`): one `Checks` per pre-flight keeps what several stages look
at once (image roots counted, weights files opened, detectron2 data sets resolved, the run
file's registrations) and the helpers the kinds use. detectron2's data and the converter are
imported in the functions that need them: the planner reads stages without them."""

import difflib
import os
import pickle

from ssl2det.errors import UserError
from ssl2det.io import check_weights_pickle

#: Bytes of one checkpoint (weights, optimiser state, besides) per trainable parameter, and the
#: parameters of the models, for the disk estimate: our rough figures.
CHECKPOINT_BYTES_PER_PARAMETER = 12
PARAMETERS = {"resnet18": 11.7e6, "resnet50": 25.6e6, "detector": 45e6}


def checkpoints_kept(iterations: int, period: int, keep: int) -> int:
    """Checkpoints a training run keeps: one per period (the newest `keep`; 0 all), the last."""
    periodic = iterations // period if period and iterations > 0 else 0
    return (min(periodic, keep) if keep else periodic) + 1


class Checks:
    """The shared state of one pre-flight over a run's stages (`spec`)."""

    def __init__(self, spec, writes: bool = True):
        self.spec = spec
        # may it keep what it learns for the stages (an archive's index)? not in a dry run,
        # which writes nothing
        self.writes = writes
        self.images = {}  # root -> images found there
        self.archs = {}  # backbone (replicate) name -> its ResNet, where known
        self._datasets = {}  # data set names -> their problems
        self._registration = None
        self.metrics_checked = set()  # transfer tasks whose metric names were checked
        self._once = {}

    def once(self, key, check) -> list:
        """`check()`'s problems, computed for the first stage that asks with `key` (a set's
        root, read once for all its backbones); [] for the later ones, so that each problem
        is listed once."""
        if key in self._once:
            return []
        self._once[key] = check()
        return self._once[key]

    def images_problem(self, what: str, root: str, index_dir: str = "") -> str:
        """"" when `root` holds images (counted into `images`), else the problem."""
        if root in self.images:
            return ""
        if not root:
            return f"{what}: no folder given"
        from pretrain.data.layouts import layout_of  # (torchvision: not for the planner)

        layout = layout_of(root)
        index_dir = index_dir if self.writes else ""
        problem = layout.problem(root, index_dir)
        if problem:
            return f"{what}: {problem}"
        self.images[root] = layout.count(root, index_dir)
        return ""

    def registration(self) -> list:
        """The run file's own data sets registered as train_net will; what is wrong with
        them."""
        if self._registration is None:
            self._registration = _register_datasets(self.spec)
        return self._registration

    def datasets(self, names: tuple) -> list:
        """What keeps detectron2 from loading the data sets `names` (each set checked once)."""
        from transfer.data import dataset_problems

        if names not in self._datasets:
            self._datasets[names] = dataset_problems(names)
        return self._datasets[names]

    def weights_arch(self, name: str, path) -> str:
        """The problem of an external backbone's file ("" when none), its ResNet kept under
        `name` as the conversion (or detectron2, for a .pkl) will open it."""
        self.archs[name], problem = _weights_arch(path)
        return problem or ""


def _register_datasets(spec) -> list:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from transfer.train_net import build_parser, register_datasets

    args = build_parser().parse_args(["--config-file", "", *spec.dataset_args])
    for name, *_ in (*args.register_coco, *args.register_voc, *args.register_semseg):
        if name in DatasetCatalog.list():  # registered again, if an earlier check did
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    try:
        register_datasets(args)
    except UserError as e:
        return [str(e)]
    return []


def _arch_of_detectron2_weights(path: str):
    """The ResNet of a detectron2-format .pkl (stem / resN.K names), or None where its names
    are another layout (Caffe2's res2_0_branch2a_w: detectron2 maps those itself)."""
    import numpy as np

    from transfer.convert import ARCHS, ConversionError

    check_weights_pickle(path)
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")  # plain data only: checked just above
    names = list((data.get("model", data) if isinstance(data, dict) else {}))
    blocks = tuple(len({k.split(f"res{s}.")[1].split(".")[0] for k in names if f"res{s}." in k})
                   for s in range(2, 6))
    if not all(blocks):
        return None
    model = data.get("model", data) if isinstance(data, dict) else {}
    broken = next((k for k, v in model.items() if getattr(v, "dtype", None) is not None
                   and v.dtype.kind == "f" and not np.isfinite(v).all()), None)
    if broken:
        raise ConversionError(f"the tensor {broken} holds NaN or infinite values: the weights are "
                              "damaged (a diverged run's checkpoint?)")
    bottleneck = any(".conv3." in k for k in names)
    return next((a for a, (layout, b) in ARCHS.items() if layout == blocks and b == bottleneck),
                f"an unknown ResNet ({blocks} {'bottleneck' if bottleneck else 'basic'} blocks)")


def _weights_arch(path):
    """(architecture or None, problem or None) of an external backbone's file."""
    from transfer.convert import convert_checkpoint

    path = str(path)
    if os.path.isdir(path):
        return None, f"weights file {path} is a folder: give the checkpoint file in it"
    if not os.path.isfile(path):
        return None, f"weights file {path} does not exist"
    try:
        if path.endswith(".pkl"):
            return _arch_of_detectron2_weights(path), None
        return convert_checkpoint(path).arch, None
    except UserError as e:
        return None, f"weights file {path}: {e}"


def arch_problem(weights_arch: str, cfg, backbone: str) -> str:
    """A backbone whose ResNet is not the one the task's config builds."""
    wanted = f"resnet{cfg.MODEL.RESNETS.DEPTH}"
    if not weights_arch or weights_arch == wanted:
        return ""
    return (f"backbone {backbone} is a {weights_arch}, but the task's config builds a {wanted} "
            f"(MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH}): the fine-tuning would start "
            "from a mostly random body. Give weights of that depth, or set MODEL.RESNETS.DEPTH "
            "(and RES2_OUT_CHANNELS 64 for ResNet-18/34, with an FPN config) in its overrides")


def _as_typed(name: str) -> str:
    return name.lower().replace("o", "0").replace("l", "1")


def metric_problems(task, cfg) -> list:
    """The task's metric and its references' metrics must be ones its evaluator reports (a
    misspelt one would fail the report after every stage ran)."""
    from transfer.metrics import known_metrics

    wanted = [("metric", task.metric)] if task.metric else []
    wanted += [(f"reference {r.label!r}", r.metric) for r in task.references]
    if not wanted or not cfg.DATASETS.TEST:
        return []
    known = known_metrics(cfg)
    problems = []
    for what, metric in wanted:
        if metric not in known:
            typed = {_as_typed(m): m for m in known}  # O for 0, l for 1, case
            close = ([typed[_as_typed(metric)]] if _as_typed(metric) in typed
                     else difflib.get_close_matches(metric, known, n=1))
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"transfer {task.name}: {what} names {metric!r}, which its "
                            f"evaluator does not report{hint} (it reports "
                            f"{', '.join(m for m in known if '-' not in m)})")
    return problems
