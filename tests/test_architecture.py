"""The structure docs/architecture.md draws: the import graph of the packages has no cycles and
every import points down the layers; plug-ins contribute their config keys through get_cfg();
the checkpoint format's encoder prefixes are where the methods keep their encoders."""

import ast
import sys

import pytest
import torch

from conftest import REPO

PACKAGES = ("ssl2det", "pretrain", "transfer", "benchmark", "pipeline")
#: Bottom first. A module may import modules of its own layer and of the layers below; the
#: longest matching prefix decides a module's layer.
LAYERS = (
    ("ssl2det",),  # shared plumbing: errors, files, processes, distributed, images, environment
    ("pretrain.checkpoint_format", "pretrain.models", "pretrain.losses", "pretrain.data"),
    ("pretrain.objectives",),  # plug-ins: extra loss terms, the Objective contract, Features
    ("pretrain.methods",),  # plug-ins: base methods, build_method
    ("pretrain.config",),  # defaults + every plug-in's add_*_config
    ("pretrain.eval",),
    ("pretrain.engine",),
    ("pretrain", "pretrain.cli", "pretrain.launch", "pretrain.make_shards",
     "pretrain.__main__"),  # entry points
    ("transfer.convert", "transfer.data", "transfer.modeling", "transfer.semseg_labels",
     "transfer.metrics"),
    ("transfer.config", "transfer.checkpoint", "transfer.visualize"),
    ("transfer.trainer",),
    ("transfer", "transfer.train_net"),  # stage two's entry point
    ("benchmark",),  # both stages' speed against their peers
    # the orchestrator over both stages
    ("pipeline.layout", "pipeline.run_file", "pipeline.run_file_messages", "pipeline.spec",
     "pipeline.record", "pipeline.starts"),
    ("pipeline.checks",),  # what the stages' pre-flight checks share
    ("pipeline.stages",),  # what each kind of stage runs, produces, is made from, checks
    ("pipeline.preflight",  # every stage's problems, the output folder, the disk
     "pipeline.executors"),  # where the stages run: the interface, local, slurm, dry run
    ("pipeline.plan",),  # what to do with each stage, handed to an executor
    ("pipeline.report",),  # the report stage's entry point; reads the stages' outputs
    ("pipeline", "pipeline.cli", "pipeline.__main__",  # the command line
     "pipeline.study"),  # a pipeline of pretraining and probe stages
)


def _modules():
    """{module name: path} of every module of the packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name, path, modules):
    """The project modules `name` imports, anywhere in the file (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
                break
    return targets


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


#: what only the executors may name: SLURM's job states and commands, an executor's name in a
#: comparison (code elsewhere never asks which executor it has)
SCHEDULER_WORDS = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CANCELLED", "TIMEOUT",
                   "NODE_FAIL", "scancel", "squeue", "sbatch", "scontrol", "sinfo", "srun"}
EXECUTOR_NAMES = {"local", "slurm"}
MAX_MODULE_LINES, MAX_TOOL_LINES = 450, 150


def _scheduler_words(path) -> list:
    """Where a module outside the executors names a scheduler word or compares with an
    executor's name (string constants only: prose in docstrings and comments is fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in SCHEDULER_WORDS:
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                if isinstance(side, ast.Constant) and side.value in EXECUTOR_NAMES:
                    found.append(f"{path.name}:{node.lineno} compares with {side.value!r}")
    return found


def test_only_the_executors_know_which_executor_runs_and_what_slurm_says():
    outside = [path for name, path in _modules().items()
               if not (name == "pipeline.executors" or name.startswith("pipeline.executors."))]
    assert [hit for path in outside for hit in _scheduler_words(path)] == []


def test_the_check_sees_a_slurm_state_and_an_executor_branch(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('if executor.name == "local":\n    state = "PENDING"\n')
    assert _scheduler_words(module) == ["m.py:1 compares with 'local'", "m.py:2 'PENDING'"]


#: what a launcher sets to say where a process stands: only ssl2det/placement.py (the one reader)
#: and the executors name them
LAUNCHER_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "GROUP_WORLD_SIZE"}


def _launcher_variables(path) -> list:
    return [f"{path.name}:{node.lineno} {node.value!r}" for node in ast.walk(ast.parse(
        path.read_text())) if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and (node.value in LAUNCHER_VARIABLES or node.value.startswith(("SLURM_", "SLURMD_")))]


def test_only_the_placement_reader_and_the_executors_name_a_launchers_variables():
    outside = [path for name, path in _modules().items()
               if name != "ssl2det.placement" and not name.startswith("pipeline.executors")]
    assert [hit for path in outside for hit in _launcher_variables(path)] == []


def test_the_check_sees_a_slurm_variable_and_torchruns_rank(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('import os\nnodes = os.environ["SLURM_JOB_NUM_NODES"]\n'
                      'rank = int(os.environ.get("RANK", 0))\n')
    assert _launcher_variables(module) == ["m.py:2 'SLURM_JOB_NUM_NODES'", "m.py:3 'RANK'"]


def test_modules_and_tools_stay_small():
    """A library module does one job (no more than 450 lines); a tool is an entry point over
    the packages (no more than 150), as detectron2's tools/ are."""
    long = [f"{p.relative_to(REPO)}: {n}" for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long += [f"{p.relative_to(REPO)}: {n}" for p in (REPO / "tools").glob("*.py")
             if (n := len(p.read_text().splitlines())) > MAX_TOOL_LINES]
    assert long == []


def _layer(module):
    matches = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if _layer(m) is None] == []


def test_imports_point_down_the_layers(graph):
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in graph.items() for t in sorted(targets) if _layer(t) > _layer(m)]
    assert upward == []


def test_the_import_graph_has_no_cycles(graph):
    state, cycles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_check_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: two modules importing each other, one of them upwards."""
    fake = {"pretrain.losses": {"pretrain.engine.run"}, "pretrain.engine.run": {"pretrain.losses"}}
    assert _layer("pretrain.engine.run") > _layer("pretrain.losses")
    with pytest.raises(AssertionError):
        test_imports_point_down_the_layers(fake)
    with pytest.raises(AssertionError):
        test_the_import_graph_has_no_cycles(fake)


def test_the_set_up_can_import_the_process_runner_with_the_standard_library_only():
    for path in (REPO / "ssl2det/__init__.py", REPO / "ssl2det/process.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names, (path, name)


def test_the_planner_and_the_report_start_without_the_training_stack():
    """`tools/pipeline.py --status`, the wrapper of every SLURM job and the report's process
    import these modules and nothing that only training, converting or drawing needs (the
    wrapper not even torch, which the stage kinds' configs bring): each of
    those packages costs seconds a process (torchvision with torch._dynamo, detectron2's data
    and engine, matplotlib)."""
    import subprocess

    heavy = ("torchvision", "detectron2.data", "detectron2.engine", "matplotlib")
    code = ("import sys, pipeline.cli, pipeline.executors.slurm, pipeline.report; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", result.stdout
    # every SLURM job's wrapper (submitit unpickles its StageJob) not even torch: 2-3 s a job
    wrapper = "import sys, pipeline.executors.slurm; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                            cwd=REPO, check=True)
    assert result.stdout.strip() == "False", "a SLURM job's wrapper imports torch"


def test_every_plugin_registers_its_keys_with_itself():
    """Each add_*_config of a method or objective module is the one its class registered (so
    get_cfg() calls it); every module of the two packages is imported by the package."""
    import pretrain.methods
    import pretrain.objectives
    from pretrain.methods import METHODS
    from pretrain.objectives import OBJECTIVES

    registered = {cls.add_config for cls in (*METHODS.values(), *OBJECTIVES.values())}
    for package in (pretrain.methods, pretrain.objectives):
        for path in (REPO / package.__name__.replace(".", "/")).glob("*.py"):
            if path.stem == "__init__":
                continue
            module = sys.modules.get(f"{package.__name__}.{path.stem}")
            assert module is not None, f"{path} is not imported"
            for name, value in vars(module).items():
                if name.startswith("add_") and name.endswith("_config"):
                    assert value in registered, f"{module.__name__}.{name} is not registered"


@pytest.mark.parametrize("method", ["simclr", "mocov2", "byol", "barlow"])
def test_each_method_declares_where_it_keeps_its_encoders(method):
    from pretrain.checkpoint_format import ONLINE_ENCODER_PREFIX
    from pretrain.config import load_config
    from pretrain.methods import METHODS, build_method
    from pretrain.models import ResNetEncoder

    cfg = load_config("", ["METHOD.NAME", method, "MODEL.ARCH", "resnet18",
                           "METHOD.MOCO.QUEUE_SIZE", "16"])
    state = build_method(cfg).state_dict()
    keys = set(state)
    encoder = set(ResNetEncoder("resnet18").state_dict())
    declared = [p for p in (ONLINE_ENCODER_PREFIX, METHODS[method].ema_encoder) if p]
    under = {p: {k[len(p):] for k in keys if k.startswith(p)} for p in declared}
    assert all(under[p] == encoder for p in declared)
    assert bool(METHODS[method].ema_encoder) == (method in ("mocov2", "byol"))
    # and no other copy of the encoder that the tools would not find
    stems = {k[:-len("conv1.weight")] for k in keys
             if k.endswith("conv1.weight") and state[k].shape[:2] == torch.Size([64, 3])}
    assert stems == set(declared)


def _touch_table() -> dict:
    """{what: (files, the paths named)} of docs/architecture.md's "To add ..." table."""
    import re

    section = (REPO / "docs/architecture.md").read_text().split("## To add ...")[1]
    rows = {}
    for line in section.split("\n## ")[0].splitlines():
        row = re.match(r"\| (an? [^|]+) \| (\d+) \| (.*) \|$", line)
        if row:
            rows[row[1]] = (int(row[2]), set(re.findall(r"`([\w/.]+\.py)`", row[3])))
    return rows


def test_the_to_add_table_counts_files_that_are_there():
    rows = _touch_table()
    assert set(rows) == {"a method", "an objective", "an executor", "a data layout",
                         "a launcher (where a process stands)", "a stage kind"}
    for what, (count, paths) in rows.items():
        assert len(paths) == count, (what, paths)
        for path in paths:  # a new file's folder, or the file to change
            assert (REPO / path).parent.is_dir() if "NAME" in path else (REPO / path).is_file()


def test_a_method_objective_layout_and_stage_kind_defined_elsewhere_are_taken(tmp_path,
                                                                             monkeypatch):
    """The registries take a plug-in of each kind where it is defined (here, in a test): its
    config keys reach get_cfg, build_method builds it, a layout is asked for its roots, a stage
    kind is built from the run file and asked for its problems."""
    import yaml
    from fvcore.common.config import CfgNode as CN

    import pipeline.stages as stages
    from pipeline.preflight import PreflightError, preflight
    from pipeline.spec import load_spec
    from pipeline.stages import SINGLE, Stage, build_stages
    from pretrain.config import load_config
    from pretrain.data import layouts
    from pretrain.methods import (METHODS, Method, build_method, ema_encoder_prefixes,
                                  register_method)
    from pretrain.objectives import OBJECTIVES, Objective, register_objective

    def add_toy_config(cfg):
        cfg.METHOD.TOY = CN({"WEIGHT": 2.0})

    def add_nudge_config(cfg):
        cfg.NUDGE = CN({"WEIGHT": 0.5})

    @register_method("toy", add_toy_config)
    class Toy(Method):
        ema_encoder = "toy_teacher."

        def __init__(self, cfg):
            super().__init__(cfg)
            self.head = self.projector()

    @register_objective("nudge", add_nudge_config)
    class Nudge(Objective):
        pass

    class Memory(layouts.ImageLayout):
        def claims(self, root):
            return root.startswith("memory:")

        def problem(self, root, index_dir=""):
            return f"{root} was forgotten"

    class Audit(Stage):
        kind, starts = "audit", SINGLE

        @classmethod
        def build(cls, spec, earlier):
            return [cls(spec.layout.root / "audit", "audit", ("audit",))]

        def problems(self, checks):
            return [checks.images_problem("audit root", "memory:old")]

        def inputs(self, upstream):
            return {}

    try:
        cfg = load_config("", ["METHOD.NAME", "toy", "METHOD.TOY.WEIGHT", "3.0",
                               "OBJECTIVES", "('nudge',)", "NUDGE.WEIGHT", "1.0"])
        assert isinstance(build_method(cfg), Toy) and cfg.METHOD.TOY.WEIGHT == 3.0
        assert "toy_teacher." in ema_encoder_prefixes() and cfg.NUDGE.WEIGHT == 1.0
        monkeypatch.setattr(layouts, "LAYOUTS", (Memory(), *layouts.LAYOUTS))
        monkeypatch.setattr(stages, "KINDS", (*stages.KINDS[:-1], Audit, stages.KINDS[-1]))
        run = tmp_path / "run.yaml"
        run.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out")}))
        spec = load_spec(str(run))
        built = build_stages(spec)
        assert [s.kind for s in built] == ["audit", "report"]
        with pytest.raises(PreflightError, match=r"audit root: memory:old was forgotten \[audit\]"):
            preflight(spec, built)
    finally:
        METHODS.pop("toy"), OBJECTIVES.pop("nudge")
