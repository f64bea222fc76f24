"""The structure docs/architecture.md draws: the import graph of the packages has no cycles and
every import points down the layers; plug-ins contribute their config keys through get_cfg();
the checkpoint format's encoder prefixes are where the methods keep their encoders."""

import ast
import sys

import pytest
import torch

from conftest import REPO

PACKAGES = ("ssl2det", "pretrain", "transfer")
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
     "transfer.metrics", "transfer.layout", "transfer.run_file", "transfer.spec"),
    ("transfer.config", "transfer.checkpoint", "transfer.visualize", "transfer.record"),
    ("transfer.trainer",),
    ("transfer.train_net", "transfer.report",  # entry point; the report reads the run layout
     "transfer.benchmark"),  # both stages' speed against their peers
    ("transfer.stages",),  # what each kind of stage runs, produces and is made from
    ("transfer.preflight",  # checks a run's inputs as train_net will read them
     "transfer.executors"),  # where the stages run: the interface, local, slurm, dry run
    ("transfer.plan",),  # what to do with each stage, handed to an executor
    ("transfer", "transfer.pipeline",  # the command line
     "transfer.study"),  # a pipeline of pretraining and probe stages
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
               if not (name == "transfer.executors" or name.startswith("transfer.executors."))]
    assert [hit for path in outside for hit in _scheduler_words(path)] == []


def test_the_check_sees_a_slurm_state_and_an_executor_branch(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('if executor.name == "local":\n    state = "PENDING"\n')
    assert _scheduler_words(module) == ["m.py:1 compares with 'local'", "m.py:2 'PENDING'"]


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
    import these modules and nothing that only training, converting or drawing needs: each of
    those packages costs seconds a process (torchvision with torch._dynamo, detectron2's data
    and engine, matplotlib)."""
    import subprocess

    heavy = ("torchvision", "detectron2.data", "detectron2.engine", "matplotlib")
    code = ("import sys, transfer.pipeline, transfer.executors.slurm, transfer.report; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_every_plugin_contributes_its_keys_through_get_cfg():
    import pretrain.methods
    import pretrain.objectives
    from pretrain.config import PLUGIN_CONFIGS

    for package in (pretrain.methods, pretrain.objectives):
        for path in (REPO / package.__name__.replace(".", "/")).glob("*.py"):
            module = __import__(f"{package.__name__}.{path.stem}", fromlist=["_"])
            for name, value in vars(module).items():
                if name.startswith("add_") and name.endswith("_config"):
                    assert value in PLUGIN_CONFIGS, f"{module.__name__}.{name} is not in get_cfg()"


@pytest.mark.parametrize("method", ["simclr", "mocov2", "byol", "barlow"])
def test_checkpoint_format_names_where_each_method_keeps_its_encoders(method):
    from pretrain.checkpoint_format import EMA_ENCODER_PREFIXES, ONLINE_ENCODER_PREFIX
    from pretrain.config import load_config
    from pretrain.methods import build_method
    from pretrain.models import ResNetEncoder

    cfg = load_config("", ["METHOD.NAME", method, "MODEL.ARCH", "resnet18",
                           "METHOD.MOCO.QUEUE_SIZE", "16"])
    state = build_method(cfg).state_dict()
    keys = set(state)
    encoder = set(ResNetEncoder("resnet18").state_dict())
    under = {p: {k[len(p):] for k in keys if k.startswith(p)}
             for p in (ONLINE_ENCODER_PREFIX, *EMA_ENCODER_PREFIXES)}
    assert under[ONLINE_ENCODER_PREFIX] == encoder
    momentum = [p for p in EMA_ENCODER_PREFIXES if under[p]]
    assert [under[p] for p in momentum] == ([encoder] if method in ("mocov2", "byol") else [])
    # and no other copy of the encoder that the tools would not find
    stems = {k[:-len("conv1.weight")] for k in keys
             if k.endswith("conv1.weight") and state[k].shape[:2] == torch.Size([64, 3])}
    assert stems == {ONLINE_ENCODER_PREFIX, *momentum}
