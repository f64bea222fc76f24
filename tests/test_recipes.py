"""The reproduction recipes are the authors' experiments value for value (docs/recipes.md is the
table; this file holds each paper-named config to it), and the pieces those recipes need behave
as their sources define them: InfoCL's schedules, LARS momentum, BYOL's per-epoch target
momentum and asymmetric views, Barlow Twins' bias learning rate, InfoMin's RandAugment, MoCo's
split BN, InfoCL's linear probe."""

import math
import re

import pytest
import torch
import yaml

from conftest import REPO

RECIPES = REPO / "docs" / "recipes.md"
CONFIGS = REPO / "configs" / "pretrain"


def recipe_tables() -> dict:
    """{config file: (names of the tables it includes, {key: value})} from docs/recipes.md."""
    tables = {}
    for section in re.split(r"^## ", RECIPES.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        if not title.endswith(".yaml"):
            continue
        also = re.search(r"Also:([^\n]*)", section)
        rows = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("key", "---"):
                rows[cells[0]] = yaml.safe_load(cells[1])
        tables[title] = (re.findall(r"[\w.-]+\.yaml", also.group(1)) if also else [], rows)
    return tables


def expected_values(name, tables) -> dict:
    includes, rows = tables[name]
    values = {}
    for included in includes:
        values.update(expected_values(included, tables))
    return {**values, **rows}


PAPER_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml")
                       if p.name.startswith(("infocl_", "Base-InfoCL")))


def test_every_paper_named_config_has_a_recipe_table():
    assert PAPER_CONFIGS and set(PAPER_CONFIGS) <= set(recipe_tables())


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_the_config_holds_every_value_of_its_recipe_table(name):
    from pretrain.config import load_config
    from ssl2det.config import config_values

    values = config_values(load_config(str(CONFIGS / name)))
    expected = expected_values(name, recipe_tables())
    assert len(expected) >= 1
    wrong = {k: (values.get(k, "missing"), v) for k, v in expected.items() if values.get(k) != v}
    assert wrong == {}, f"{name}: config value vs docs/recipes.md"


def test_the_table_check_fails_on_a_changed_value(tmp_path):
    from pretrain.config import load_config
    from ssl2det.config import config_values

    (tmp_path / "Base-InfoCL-CIFAR10.yaml").write_text(
        (CONFIGS / "Base-InfoCL-CIFAR10.yaml").read_text().replace("COLOR_JITTER: (0.8, 0.8, 0.8, 0.2)",
                                                                  "COLOR_JITTER: (0.4, 0.4, 0.4, 0.1)"))
    values = config_values(load_config(str(tmp_path / "Base-InfoCL-CIFAR10.yaml")))
    assert values["INPUT.COLOR_JITTER"] != expected_values("Base-InfoCL-CIFAR10.yaml",
                                                           recipe_tables())["INPUT.COLOR_JITTER"]


# --- schedules and optimisers ----------------------------------------------------------------

def test_learning_rate_schedules():
    from pretrain.engine.optim import lr_at

    assert {lr_at(i, 100, 0.5, 0, schedule="constant") for i in range(100)} == {0.5}
    per_epoch = [lr_at(i, 100, 1.0, 0, schedule="cosine_per_epoch", iters_per_epoch=10)
                 for i in range(100)]
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    torch_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10, eta_min=0)
    for epoch in range(10):  # InfoCL's: CosineAnnealingLR(epochs) stepped once per epoch
        assert per_epoch[epoch * 10:(epoch + 1) * 10] == pytest.approx(
            [opt.param_groups[0]["lr"]] * 10)
        opt.step()
        torch_schedule.step()


def test_classic_lars_momentum_puts_the_rate_inside_the_velocity():
    from pretrain.engine.optim import LARS, param_groups

    def run(classic, foreach, lrs):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = LARS(param_groups(model, 1e-4, False), lr=lrs[0], momentum=0.9, weight_decay=1e-4,
                   foreach=foreach, classic_momentum=classic)
        for lr in lrs:
            for group in opt.param_groups:
                group["lr"] = lr
            model.zero_grad()
            model(torch.ones(2, 4)).pow(2).sum().backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    constant, changing = [0.1] * 3, [0.1, 0.05, 0.01]
    assert torch.allclose(run(True, False, constant), run(False, False, constant), atol=1e-7)
    assert not torch.allclose(run(True, False, changing), run(False, False, changing), atol=1e-6)
    assert torch.allclose(run(True, True, changing), run(True, False, changing), atol=1e-6)


def test_barlow_twins_biases_and_norms_learn_at_the_smaller_rate(shared_data, tmp_path):
    from detectron2.utils.events import EventStorage

    from pretrain.config import load_config
    from pretrain.engine.run import build_trainer

    cfg = load_config(str(CONFIGS / "barlow_r50_imagenet.yaml"), [
        "MODEL.ARCH", "resnet18", "METHOD.PROJECTOR.HIDDEN_DIM", "64", "METHOD.PROJECTOR.OUT_DIM",
        "64", "INPUT.SIZE", "32", "SOLVER.BATCH_SIZE", "4", "SOLVER.MAX_ITER", "1",
        "DATA.ROOT", str(shared_data / "imagenet-sample/train"), "DATA.VAL_ROOT", "",
        "DATA.NUM_WORKERS", "0", "MODEL.CHANNELS_LAST", "False", "OUTPUT_DIR", str(tmp_path)])
    trainer = build_trainer(cfg)
    trainer.iter = 0
    with EventStorage() as trainer.storage:
        trainer.run_step()
    weights, others = trainer.optimizer.param_groups
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim <= 1 for p in others["params"])
    assert others["lr"] == pytest.approx(weights["lr"] * 0.0048 / 0.2)
    assert others["weight_decay"] == 0 and others["lars_exclude"]


# --- BYOL ------------------------------------------------------------------------------------

def test_byols_target_momentum_per_epoch_is_infocls():
    from pretrain.config import load_config
    from pretrain.methods import build_method
    from pretrain.objectives import Progress

    cfg = load_config(str(CONFIGS / "infocl_cifar10_byol.yaml"),
                      ["METHOD.PROJECTOR.HIDDEN_DIM", "16", "METHOD.BYOL.PREDICTOR_HIDDEN_DIM", "16"])
    byol = build_method(cfg)
    epochs, per_epoch = 4, 5
    for step in range(epochs * per_epoch):  # the step just taken, 0-based
        epoch = step // per_epoch  # BYOL/main.py:76
        infocl = 1 - (1 - 0.996) * (math.cos(math.pi * epoch / epochs) + 1) / 2
        got = byol.target_momentum(Progress(step + 1, epochs * per_epoch, per_epoch))
        assert got == pytest.approx(infocl)


def test_byols_asymmetric_views_blur_and_solarise_as_in_byol():
    from pretrain.config import load_config
    from pretrain.data import build_views

    cfg = load_config(str(CONFIGS / "byol_r50_imagenet.yaml"))
    views = build_views(cfg, augment_on_device=False).views

    def probabilities(view):
        p = {step.name: step.p for step in view.steps}
        return p.get("GaussianBlur", 0.0), p.get("RandomSolarize", 0.0)

    assert [probabilities(v) for v in views] == [(1.0, 0.0), (0.1, 0.2)]
    assert tuple(cfg.INPUT.COLOR_JITTER) == (0.4, 0.4, 0.2, 0.1)


# --- InfoMin ---------------------------------------------------------------------------------

def test_infomins_randaugment_is_pycontrasts():
    from pretrain.data.randaugment import OPERATIONS, operation_arguments

    # PyContrast's _RAND_TRANSFORMS (datasets/RandAugment.py), PosterizeTpu as "Posterize"
    assert OPERATIONS == ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
                          "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness",
                          "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
    top = {name: operation_arguments(name, 10.0) for name in OPERATIONS}
    assert top["Rotate"] == (30.0,) and top["ShearX"] == (0.3,) and top["TranslateXRel"] == (0.45,)
    assert top["Color"] == top["Brightness"] == (pytest.approx(1.9),) and top["Posterize"] == (4,)
    assert top["Solarize"] == (256,) and top["SolarizeAdd"] == (110,) and top["Invert"] == ()
    assert operation_arguments("Rotate", 10.0, sign=-1.0) == (-30.0,)
    half = operation_arguments("Contrast", 5.0)
    assert half == (pytest.approx(1.0),)


def test_infomins_view_order_is_pycontrasts():
    from pretrain.config import load_config
    from pretrain.data import build_views

    cfg = load_config(str(CONFIGS / "infomin_mocov2_r50_imagenet.yaml"))
    view = build_views(cfg, augment_on_device=False).views[0]
    # every view starts with the random resized crop (View.draw_box), then these
    assert [step.name for step in view.steps] == ["RandomHorizontalFlip", "ColorJitter",
                                                  "GaussianBlur", "RandAugment",
                                                  "RandomGrayscale"]
    assert [step.p for step in view.steps] == [0.5, 0.8, 0.5, 1.0, 0.2]
    assert tuple(cfg.INPUT.COLOR_JITTER) == (0.8, 0.8, 0.8, 0.2)
    assert tuple(cfg.INPUT.CROP_SCALE) == (0.2, 1.0)


# --- MoCo in one process ---------------------------------------------------------------------

def test_moco_in_one_process_keys_get_batch_norm_statistics_of_their_own():
    """Query and key batches are the same images: with plain BN the key encoder (a copy) would
    normalise the key batch with exactly the query batch's statistics; split BN over a shuffled
    key batch gives each group statistics of its own. And the online encoder sees the query
    view only."""
    from pretrain.config import load_config
    from pretrain.methods import build_method

    cfg = load_config("", ["METHOD.NAME", "mocov2", "MODEL.ARCH", "resnet18",
                           "MODEL.CIFAR_STEM", "True", "INPUT.SIZE", "16",
                           "METHOD.MOCO.QUEUE_SIZE", "64", "METHOD.MOCO.SPLIT_BN_GROUPS", "4"])
    torch.manual_seed(0)
    moco = build_method(cfg)
    seen = {"query": [], "key": []}
    moco.encoder.bn1.register_forward_hook(
        lambda m, i, o: seen["query"].append(i[0].mean((0, 2, 3))))
    moco.key_encoder.copies[0].bn1.register_forward_hook(
        lambda m, i, o: seen["key"].append(i[0].mean((0, 2, 3))))
    x = torch.randn(16, 3, 16, 16)
    moco([x, x.clone()])
    assert len(seen["query"]) == 1 and len(seen["key"]) == 4
    for key_mean in seen["key"]:
        assert not torch.allclose(key_mean, seen["query"][0], atol=1e-3)


# --- the linear probe ------------------------------------------------------------------------

def test_infocl_probe_uses_raw_features_and_reports_last_and_best():
    from pretrain.eval.linear import train_linear_probe

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(300) % 3
    f = centers[y] + torch.randn(300, 8, generator=g)
    yt = torch.arange(90) % 3
    ft = centers[yt] + torch.randn(90, 8, generator=g)
    ours = train_linear_probe(f, y, ft, yt, epochs=5)
    assert ours.best >= ours.last > 90 and 1 <= ours.best_epoch <= 5 and len(ours.losses) == 5
    # standardised features do not see a change of scale; InfoCL's raw features do
    scaled = train_linear_probe(f * 100, y, ft * 100, yt, epochs=5)
    assert scaled.losses == pytest.approx(ours.losses, rel=1e-4)
    infocl = train_linear_probe(f, y, ft, yt, epochs=5, protocol="infocl")
    infocl_scaled = train_linear_probe(f * 100, y, ft * 100, yt, epochs=5, protocol="infocl")
    assert infocl.losses != pytest.approx(infocl_scaled.losses, rel=1e-2)


# --- STL-10 ----------------------------------------------------------------------------------

def test_stl10_stem_and_evaluation_size():
    from pretrain.config import load_config
    from pretrain.data import eval_transform
    from pretrain.models import build_encoder

    cfg = load_config(str(CONFIGS / "infocl_stl10_simclr.yaml"))
    assert build_encoder(cfg).conv1.stride == (2, 2)
    image = torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)
    out = eval_transform(cfg)(image)
    assert out.shape == (3, 96, 96)
    expected = (image[0].float() / 255 - 0.491) / 0.247
    assert torch.allclose(out[0], expected, atol=1e-5)
