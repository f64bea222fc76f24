"""The objectives: the LBE bound against the mutual information of a Gaussian channel (closed
form), the RC decoders' shapes, SuperInfo's superfluous-information term, MRCL's masks, and
every objective config for 2 iterations on the CPU."""

import math

import pytest
import torch

from conftest import REPO
from pretrain.losses import gaussian_kl, lbe_bound


def _lbe_on_gaussian_channel(a, sigma=0.1, d=4, n=256, batches=8, seed=0):
    """Mean LBE estimate for v ~ N(0, I_d), mu = a v, h = mu + sigma eps, the true critic."""
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(batches):
        mu = a * torch.randn(n, d, generator=g, dtype=torch.float64)
        h = mu + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
        values.append(lbe_bound(h, mu, rho=1 / (2 * sigma ** 2)).item())
    return sum(values) / len(values)


def test_lbe_stays_below_the_gaussian_channel_mutual_information_and_tracks_it():
    estimates, truths = [], []
    for a in (0.02, 0.05, 0.1, 0.2):
        truth = 4 / 2 * math.log(1 + a ** 2 / 0.1 ** 2)  # I(h; v) = d/2 log(1 + a^2 / sigma^2)
        estimate = _lbe_on_gaussian_channel(a)
        assert estimate <= truth + 0.05, (a, estimate, truth)
        assert estimate >= 0.6 * truth - 0.05, (a, estimate, truth)  # a useful bound, not ~0
        estimates.append(estimate)
        truths.append(truth)
    assert estimates == sorted(estimates)


def test_lbe_closed_forms_no_information_and_perfect_separation():
    h = torch.randn(64, 8, dtype=torch.float64)
    same = torch.zeros(64, 8, dtype=torch.float64)
    assert lbe_bound(h, same, rho=0.5).item() == pytest.approx(0.0, abs=1e-12)  # log N - log N
    far = torch.eye(64, dtype=torch.float64) * 100  # every mu far from the others
    assert lbe_bound(far, far, rho=1.0).item() == pytest.approx(math.log(64), abs=1e-9)


@pytest.mark.parametrize("size, in_dim", [(32, 512), (64, 512), (224, 2048)])
def test_rc_decoders_give_the_input_shape(size, in_dim):
    from pretrain.objectives.decoders import ImageDecoder

    decoder = ImageDecoder(in_dim, size)
    assert decoder(torch.randn(2, in_dim)).shape == (2, 3, size, size)


def test_rc_term_is_zero_when_the_decoder_reproduces_the_target():
    from pretrain.config import load_config
    from pretrain.methods import build_method

    cfg = load_config("", ["OBJECTIVES", '("infocl_rc",)', "MODEL.ARCH", "resnet18",
                           "INPUT.SIZE", "32"])
    from pretrain.objectives import Features

    rc = build_method(cfg).objectives[0]
    views = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    rc.decoder = torch.nn.Unflatten(1, (3, 32, 32))  # a perfect decoder
    hs = [v.flatten(1) for v in views]
    features = Features(h=hs, mu=hs, taps=[{}, {}], views=views, originals=views)
    assert rc(features)["loss_rc"].item() == 0.0
    features.h[0] = features.h[0] + 1
    assert rc(features)["loss_rc"].item() == pytest.approx(cfg.INFOCL_RC.WEIGHT * 1.0)


def test_superinfo_term_zero_for_identical_posteriors_positive_otherwise_and_reaches_encoder():
    from pretrain.config import load_config
    from pretrain.methods import build_method

    mu, std = torch.randn(8, 16), torch.rand(8, 16) + 0.1
    assert gaussian_kl(mu, std, mu, std).item() == pytest.approx(0.0, abs=1e-6)
    assert gaussian_kl(mu, std, mu + 0.5, std).item() > 0
    assert gaussian_kl(mu, std, mu, std * 2).item() > 0

    cfg = load_config("", ["OBJECTIVES", '("superinfo",)', "MODEL.ARCH", "resnet18",
                           "MODEL.CIFAR_STEM", "True", "INPUT.SIZE", "32"])
    torch.manual_seed(0)
    method = build_method(cfg)
    method.objectives[0].progress.fill_(1.0)  # past the annealing
    same = torch.randn(4, 3, 32, 32)
    method.eval()  # BN by running statistics: the two views go through the same function
    assert method([same, same.clone()])["losses"]["loss_superfluous"].item() == pytest.approx(
        0.0, abs=1e-5)
    method.train()
    out = method([same, torch.randn(4, 3, 32, 32)])
    term = out["losses"]["loss_superfluous"]
    assert term.item() > 0
    term.backward()
    assert method.encoder.conv1.weight.grad.abs().sum() > 0


def test_mrcl_masks_the_configured_fraction_of_patches():
    from pretrain.config import load_config
    from pretrain.methods import build_method
    from pretrain.objectives.mrcl import random_patch_mask

    mask = random_patch_mask(16, 32, 4, 0.3)
    assert mask.shape == (16, 1, 32, 32)
    assert torch.all(mask.mean(dim=(1, 2, 3)) == round(0.3 * 64) / 64)
    blocks = mask.unfold(2, 4, 4).unfold(3, 4, 4)  # every 4x4 patch is all 0 or all 1
    assert torch.all(blocks.amin(dim=(-1, -2)) == blocks.amax(dim=(-1, -2)))

    cfg = load_config("", ["OBJECTIVES", '("mrcl",)', "MODEL.ARCH", "resnet18",
                           "INPUT.SIZE", "32", "MRCL.MASK_RATIO", "0.5"])
    mrcl = build_method(cfg).objectives[0]
    views = [torch.rand(2, 3, 32, 32) + 1 for _ in range(2)]  # no zeros of their own
    masked = mrcl.prepare(views)
    for v, m in zip(masked, mrcl.masks):
        assert (v == 0).float().mean().item() == pytest.approx(0.5)
        assert torch.equal(v == 0, m.expand_as(v).bool())


OBJECTIVE_CONFIGS = ["infocl_cifar10_simclr_rc", "infocl_cifar10_simclr_lbe",
                     "infocl_cifar10_byol_rc", "infocl_cifar10_byol_lbe",
                     "infocl_cifar10_barlow_rc", "infocl_stl10_simclr_lbe",
                     "infocl_imagenet_simclr_rc", "infocl_imagenet_simclr_lbe",
                     "superinfo_r18_cifar", "superinfo_r50_imagenet", "mrcl_r18_cifar",
                     "mrcl_r50_imagenet", "infomin_mocov2_r50_imagenet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", OBJECTIVE_CONFIGS)
def test_objective_config_runs_two_iterations_without_nan(name, shared_data, tmp_path):
    from pretrain.config import load_config
    from pretrain.engine.run import run_pretraining

    data = "imagenet-sample/train" if "imagenet" in name else "cifar10-small/test"
    # (the ImageNet configs at 64 px: what runs is the same, a tenth of 224 px's arithmetic)
    size = ["INPUT.SIZE", "64"] if "imagenet" in name else []
    cfg = load_config(str(REPO / f"configs/pretrain/{name}.yaml"),
                      ["DATA.ROOT", str(shared_data / data), "DATA.VAL_ROOT", "",
                       "SOLVER.BATCH_SIZE", "4", "SOLVER.MAX_ITER", "2", "LOG_PERIOD", "1",
                       "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path), *size])
    trainer = run_pretraining(cfg)  # a NaN/inf loss raises NonFiniteLossError
    latest = trainer.storage.latest()
    assert math.isfinite(latest["loss"][0])
    expected = {"infocl_rc": "loss_rc", "infocl_lbe": "loss_lbe_layer4",
                "superinfo": "loss_superfluous", "mrcl": "loss_mrcl_rec"}
    for objective in cfg.OBJECTIVES:
        assert expected[objective] in latest
