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
                       if p.name.startswith(("infocl_", "Base-InfoCL", "infomin_"))
                       or p.name == "mocov2_r50_imagenet.yaml")


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


# --- round three: InfoMin's jigsaw branch -----------------------------------------------------

def test_the_jigsaw_crop_is_pycontrasts_grid_of_patches():
    """A 255 px crop of the whole image (no flip): 9 patches of 64 px, row-major, each inside
    its 85 px cell at an offset of 0..21 per axis; the pixels are the image's, normalised."""
    import random

    import numpy as np

    from pretrain.data.views import JigsawView

    rows, cols = np.meshgrid(np.arange(255), np.arange(255), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)  # R = row, G = col

    class NoFlip(random.Random):
        def random(self):  # the flip's coin: never; the offsets still drawn by randint
            return 0.99

    view = JigsawView(255, (0.6, 1.0), grid=3, patch=64, normalize=((0, 0, 0), (1, 1, 1)))
    patches = view(image, (0, 0, 255, 255), NoFlip(3))
    assert patches.shape == (9, 3, 64, 64)
    levels = (patches * 255).round().long()
    for i, patch in enumerate(levels):
        top, left = int(patch[0, 0, 0]), int(patch[1, 0, 0])
        assert i // 3 * 85 <= top <= i // 3 * 85 + 21 and i % 3 * 85 <= left <= i % 3 * 85 + 21
        assert torch.equal(patch[0, :, 0], torch.arange(top, top + 64))  # a whole, unscaled crop
        assert torch.equal(patch[1, 0, :], torch.arange(left, left + 64))


def _jigsaw_moco(extra=()):
    from pretrain.config import load_config
    from pretrain.methods import build_method

    cfg = load_config(str(CONFIGS / "infomin_mocov2_r50_imagenet.yaml"), [
        "MODEL.ARCH", "resnet18", "METHOD.MOCO.QUEUE_SIZE", "16", "METHOD.PROJECTOR.HIDDEN_DIM",
        "16", "METHOD.PROJECTOR.OUT_DIM", "8", "INPUT.JIGSAW.SIZE", "24", "INPUT.JIGSAW.PATCH",
        "8", *extra])
    torch.manual_seed(0)
    return cfg, build_method(cfg)


def test_the_jigsaw_head_aggregates_as_pycontrasts():
    """fc1 per patch, the patches of each image in a random order (PyContrast's indexing
    x[randperm + base]), concatenated, fc2, L2 norm; the orders do not depend on how the batch
    is split over ranks."""
    import torch.nn.functional as F

    from pretrain.methods import mocov2

    _, moco = _jigsaw_moco()
    head = moco.jigsaw
    features = torch.randn(2 * 9, 512)
    orders = head.orders(2)
    ids = torch.cat([orders[i] + 9 * i for i in range(2)])  # PyContrast's get_shuffle_ids
    expected = F.normalize(head.aggregate(head.embed(features)[ids].view(2, -1)), dim=1)
    assert torch.allclose(head(features), expected, atol=1e-6)
    assert int(head.step) == 1  # the next step draws other orders
    first = head.orders(4)
    for rank in (0, 1):  # the same global batch split over 2 ranks
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mocov2, "get_world_size", lambda: 2)
            patch.setattr(mocov2, "get_rank", lambda r=rank: r)
            assert torch.equal(head.orders(2), first[2 * rank:2 * rank + 2])


def test_the_infomin_loss_is_one_minus_beta_nce_plus_beta_jigsaw_nce():
    """Hand-computed: logits of the query and of the jigsaw embedding against the same key
    (positive) and queue (negatives), over the temperature."""
    import torch.nn.functional as F

    from pretrain.objectives import Features

    cfg, moco = _jigsaw_moco()
    moco.eval()  # no enqueue, no step: the queue and orders stay as read
    views = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 9, 3, 8, 8)]
    h = moco.encoder(views[0])
    features = Features(h=[h], mu=[h], taps=[{}], views=views, originals=views)
    k = moco._keys(views[1])
    q = F.normalize(moco.head(h), dim=1)
    q_jig = moco.jigsaw(moco.encoder(views[2].flatten(0, 1)))
    queue, t, beta = moco.queue, cfg.METHOD.MOCO.TEMPERATURE, cfg.METHOD.MOCO.JIGSAW_BETA

    def nce(a):
        logits = torch.cat([(a * k).sum(1, keepdim=True), a @ queue.T], 1) / t
        return -(logits[:, 0] - logits.logsumexp(1)).mean()
    terms = moco.loss_terms(features)
    assert beta == 0.5 and t == 0.15
    assert float(terms["loss_info_nce"]) == pytest.approx(float((1 - beta) * nce(q)), rel=1e-5)
    assert float(terms["loss_jigsaw"]) == pytest.approx(float(beta * nce(q_jig)), rel=1e-5)


def test_infomin_is_infomin_and_the_augmentation_alone_is_named_so():
    from pretrain.config import load_config
    from pretrain.data import build_views

    full = load_config(str(CONFIGS / "infomin_mocov2_r50_imagenet.yaml"))
    alone = load_config(str(CONFIGS / "infomin_aug_mocov2_r50_imagenet.yaml"))
    assert full.INPUT.JIGSAW.ENABLED and not alone.INPUT.JIGSAW.ENABLED
    assert [type(v).__name__ for v in build_views(full, False).views] == ["View", "View",
                                                                          "JigsawView"]
    assert "70.1" in (CONFIGS / "infomin_mocov2_r50_imagenet.yaml").read_text()
    assert "no number is quoted" in (CONFIGS / "infomin_aug_mocov2_r50_imagenet.yaml").read_text()


# --- round three: schedules, LARS, initialisation -------------------------------------------

def test_pycontrasts_cosine_counts_epochs_from_one_down_to_a_thousandth():
    from pretrain.engine.optim import lr_at

    epochs, per_epoch, base = 5, 3, 0.03
    ours = [lr_at(i, epochs * per_epoch, base, 0, 0.001, "cosine_per_epoch", per_epoch, 1)
            for i in range(epochs * per_epoch)]
    eta_min = base * 0.1 ** 3  # PyContrast learning/base_trainer.py:70-72, epoch = 1..epochs
    theirs = [eta_min + (base - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2
              for e in range(1, epochs + 1)]
    assert ours == pytest.approx([lr for lr in theirs for _ in range(per_epoch)])
    assert ours[-1] == pytest.approx(eta_min)


def test_infocls_lars_leaves_a_zero_norm_parameter_where_it_is():
    from pretrain.engine.optim import LARS

    for foreach in (False, True):
        moved = {}
        for trust in (0.0, 1.0):
            w = torch.nn.Parameter(torch.zeros(4))
            opt = LARS([{"params": [w]}], lr=0.1, momentum=0.9, weight_decay=1e-6,
                       foreach=foreach, classic_momentum=True, zero_norm_trust=trust)
            w.grad = torch.ones(4)
            opt.step()
            moved[trust] = float(w.detach().abs().sum())
        assert moved[0.0] == 0.0 and moved[1.0] > 0


def test_infocl_resnets_start_from_their_authors_initialisation():
    """The CIFAR ResNet (SimCLR/modules/resnet.py) sets none: PyTorch's defaults; the ImageNet
    one (resnet_imagenet.py:93-99) draws convs from N(0, sqrt(2 / (k*k*out))): torchvision's."""
    import torch.nn as nn

    from pretrain.config import load_config
    from pretrain.eval.linear import new_linear_layer
    from pretrain.models import build_encoder

    def conv_std(name):  # (a 3x3 convolution of 64 channels: fan in = fan out = 576)
        torch.manual_seed(0)
        cfg = load_config(str(CONFIGS / name), ["MODEL.ARCH", "resnet18"])
        return float(build_encoder(cfg).layer1[0].conv1.weight.std())

    fan = 64 * 3 * 3
    pytorch, torchvision = (1 / fan) ** 0.5 / 3 ** 0.5, (2 / fan) ** 0.5  # U(+-1/sqrt(fan in)),
    assert conv_std("infocl_cifar10_simclr.yaml") == pytest.approx(pytorch, rel=0.1)  # Kaiming
    assert conv_std("infocl_imagenet_simclr.yaml") == pytest.approx(torchvision, rel=0.1)  # normal
    assert conv_std("simclr_r50_imagenet.yaml") == pytest.approx(torchvision, rel=0.1)  # fan out
    torch.manual_seed(0)
    default = new_linear_layer(512, 10, "pytorch")  # InfoCL's eval_lr.py: nn.Linear's own
    torch.manual_seed(0)
    assert torch.equal(default.weight, nn.Linear(512, 10).weight)
    normal = new_linear_layer(512, 10, "normal")  # eval_lr_imagenet.py:141-142
    assert float(normal.weight.std()) == pytest.approx(0.01, rel=0.1) and not normal.bias.any()


# --- round three: the ImageNet probe ---------------------------------------------------------

def test_the_imagenet_probe_protocol_is_eval_lr_imagenets():
    from pretrain.config import load_config
    from pretrain.data import eval_transform
    from pretrain.data.views import Flip
    from pretrain.eval.image_probe import training_views
    from pretrain.eval.linear import PROTOCOLS

    p = PROTOCOLS["infocl_imagenet"]
    assert (p.batch_size, p.lr, p.schedule, p.drop_last, p.init, p.on_images, p.standardize) == (
        256, 0.3, "cosine_per_epoch", True, "normal", True, False)
    cfg = load_config(str(CONFIGS / "infocl_imagenet_simclr.yaml"))
    assert cfg.PROBE.PROTOCOL == "infocl_imagenet"
    (view,) = training_views(cfg).views
    assert (view.size, view.scale) == (224, (0.08, 1.0))  # RandomResizedCrop(224)'s defaults
    assert [type(s) for s in view.steps] == [Flip]
    resize, crop = eval_transform(cfg).transforms[1:3]
    assert (list(resize.size), list(crop.size)) == ([256], [224, 224])  # Resize, CenterCrop
    p = PROTOCOLS["infocl"]
    assert (p.batch_size, p.lr, p.schedule, p.drop_last, p.init) == (
        128, 0.01, "multistep_60_80", True, "pytorch")


def test_the_imagenet_probe_runs_on_real_images_and_resumes_exactly(shared_data, tmp_path):
    """On imagenet-sample at 32 px: an interrupted probe resumes after its last whole epoch and
    ends where an uninterrupted one does."""
    from pretrain.config import load_config
    from pretrain.eval.image_probe import STATE_FILE, train_probe_on_images
    from pretrain.models import build_encoder

    root = str(shared_data / "imagenet-sample/train")
    cfg = load_config(str(CONFIGS / "infocl_imagenet_simclr.yaml"), [
        "MODEL.ARCH", "resnet18", "INPUT.SIZE", "32", "DATA.NUM_WORKERS", "0",
        "DATA.FILE_INDEX", "False"])
    torch.manual_seed(0)
    encoder = build_encoder(cfg)

    def probe(folder, **kwargs):
        return train_probe_on_images(cfg, encoder, root, root, str(folder), torch.device("cpu"),
                                     epochs=3, batch_size=32, **kwargs)
    whole = probe(tmp_path / "whole")

    def stop_after_two(epoch, loss):
        if epoch == 2:
            raise KeyboardInterrupt
    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        probe(tmp_path / "cut", progress=stop_after_two)
    assert torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)["epoch"] == 2
    resumed = probe(tmp_path / "cut")
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6) and len(whole.losses) == 3
    assert (resumed.last, resumed.best, resumed.best_epoch) == (whole.last, whole.best,
                                                                whole.best_epoch)
    assert 0 <= whole.last <= 100


def test_the_imagenet_probe_on_two_processes_equals_one(shared_data, tmp_path):
    from ddp_helpers import image_probe_on_ranks

    one, two = (image_probe_on_ranks(str(shared_data / "imagenet-sample/train"), world,
                                     str(tmp_path / f"w{world}")) for world in (1, 2))
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    assert two["last"] == one["last"] and torch.allclose(two["weight"], one["weight"], atol=1e-6)


def test_a_probe_trains_on_the_labelled_folder_and_refuses_one_class(shared_data, tmp_path):
    """STL-10's configs pretrain on the unlabeled folder (one class folder): the probe takes
    KNN.TRAIN_ROOT, the labelled one; a one-class training folder is refused in one line."""
    import argparse

    from pretrain.eval.cli import Evaluation
    from ssl2det.errors import ConfigError

    labelled = shared_data / "cifar10-small/test"
    unlabeled = tmp_path / "unlabeled"
    (unlabeled / "all").mkdir(parents=True)
    for i, image in enumerate(sorted(labelled.rglob("*.jpg"))[:4]):
        (unlabeled / "all" / f"{i}.jpg").write_bytes(image.read_bytes())
    args = argparse.Namespace(config_file=str(CONFIGS / "infocl_stl10_simclr.yaml"),
                              checkpoint=None, ema=False, train_root=None, val_root=None,
                              protocol=None, opts=["DATA.ROOT", str(unlabeled), "KNN.TRAIN_ROOT",
                                                   str(labelled), "DATA.VAL_ROOT", str(labelled)])
    evaluation = Evaluation(args)
    assert evaluation.train_root == str(labelled) and evaluation.protocol == "infocl"
    args.opts = ["DATA.ROOT", str(unlabeled), "KNN.TRAIN_ROOT", "", "DATA.VAL_ROOT", str(labelled)]
    with pytest.raises(ConfigError, match=r"has 1 class \(all\): a linear probe needs labelled"):
        Evaluation(args)


# --- round three: batch norm at paper scale -------------------------------------------------

def test_infocls_imagenet_batch_norm_sees_256_images_on_any_number_of_processes(tmp_path):
    from ddp_helpers import batch_norm_groups_on_ranks

    from pretrain.config import load_config
    from pretrain.engine.run import batch_norm_ranks, batch_norm_splits

    cfg = load_config(str(CONFIGS / "infocl_imagenet_simclr.yaml"))
    assert cfg.MODEL.BN_GROUP_IMAGES == 256 and cfg.SOLVER.BATCH_SIZE == 1024
    assert [batch_norm_ranks(cfg, world) for world in (4, 8, 16)] == [1, 2, 4]
    assert [batch_norm_splits(cfg, world) for world in (1, 2, 4, 8)] == [4, 2, 1, 1]
    # 4 gloo processes in groups of 2: each rank's BN output is BN over its pair's images
    assert batch_norm_groups_on_ranks(4, 2, str(tmp_path))


def test_split_batch_norm_is_batch_norm_over_each_part_with_the_first_parts_statistics():
    """Against torch's own BatchNorm2d applied to each 32-image part separately (what each of 8
    GPUs computes): the outputs, the gradients, and the running statistics (the first part's)."""
    from torch import nn

    from pretrain.models.split_bn import SplitBatchNorm, split_batch_norm

    torch.manual_seed(0)
    x = torch.randn(128, 6, 5, 5, requires_grad=True)
    model = split_batch_norm(nn.Sequential(nn.BatchNorm2d(6)), groups=4)
    assert isinstance(model[0], SplitBatchNorm)
    reference = nn.BatchNorm2d(6)
    out = model(x)
    expected = torch.cat([nn.BatchNorm2d(6)(part) for part in x.chunk(4)])
    assert torch.allclose(out, expected, atol=1e-5)
    reference(x[:32])
    assert torch.allclose(model[0].running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(model[0].running_var, reference.running_var, atol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    parts = [p.detach().requires_grad_() for p in x.chunk(4)]
    ref_grads = torch.autograd.grad(sum(nn.BatchNorm2d(6)(p).square().sum() for p in parts), parts)
    assert torch.allclose(grad, torch.cat(ref_grads), atol=1e-4)
    # the jigsaw branch's 9 patches an image: parts of the same images' worth
    assert model(torch.randn(128 * 9, 6, 2, 2)).shape[0] == 128 * 9



def test_moco_and_infomin_normalise_over_32_images_on_any_layout():
    from pretrain.config import load_config
    from pretrain.engine.run import batch_norm_ranks, batch_norm_splits

    for name in ("mocov2_r50_imagenet.yaml", "infomin_mocov2_r50_imagenet.yaml"):
        cfg = load_config(f"configs/pretrain/{name}")
        assert cfg.MODEL.BN_GROUP_IMAGES == 32 and cfg.SOLVER.BATCH_SIZE == 256
        assert [batch_norm_splits(cfg, w) for w in (1, 2, 8)] == [8, 4, 1]
        assert [batch_norm_ranks(cfg, w) for w in (1, 2, 8)] == [1, 1, 1]

