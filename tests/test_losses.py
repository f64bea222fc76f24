"""The base losses against lightly (an independent implementation) and closed forms; the
optimiser's exclusions; the schedule; the sampler's split across ranks."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.losses import barlow_twins, info_nce_with_queue, negative_cosine, nt_xent


def _pair(n=16, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(),
            torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_())


def _value_and_grads(fn, a, b):
    loss = fn(a, b)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_lightly(temperature):
    from lightly.loss import NTXentLoss

    a, b = _pair()
    ours = _value_and_grads(lambda x, y: nt_xent(x, y, temperature), a, b)
    theirs = _value_and_grads(NTXentLoss(temperature=temperature), a, b)
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-9, atol=1e-12)


def test_barlow_twins_matches_lightly():
    from lightly.loss import BarlowTwinsLoss

    a, b = _pair(n=32, d=8)
    ours = _value_and_grads(lambda x, y: barlow_twins(x, y, 0.0051), a.float(), b.float())
    theirs = _value_and_grads(BarlowTwinsLoss(lambda_param=0.0051), a.float(), b.float())
    for o, t in zip(ours, theirs):
        torch.testing.assert_close(o, t, rtol=1e-5, atol=1e-6)


def test_byol_loss_matches_lightly_negative_cosine():
    from lightly.loss import NegativeCosineSimilarity

    p, z = _pair()
    ours = negative_cosine(p, z)
    theirs = 2 + 2 * NegativeCosineSimilarity()(p, z.detach())  # lightly: -mean cos
    torch.testing.assert_close(ours, theirs)
    assert torch.autograd.grad(ours, z, allow_unused=True)[0] is None  # target: no gradient


def test_nt_xent_closed_form_for_two_images():
    # Two images, orthogonal unit embeddings, identical views: each anchor's logits are
    # [self=-inf, other image's views: 0, 0, positive: 1/T].
    z = torch.eye(2, dtype=torch.float64)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-12)


def test_info_nce_with_queue_closed_form():
    q = F.normalize(torch.tensor([[1.0, 0.0]], dtype=torch.float64), dim=1)
    k = q.clone()
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    t = 0.2
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(0) + math.exp(-1 / t)))
    assert info_nce_with_queue(q, k, queue, t).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_lars_excludes_biases_and_norms_from_adaptation_and_decay(foreach):
    from pretrain.engine.optim import LARS, param_groups

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    groups = param_groups(model, weight_decay=0.5, exclude_bias_and_norm=True)
    assert [len(g["params"]) for g in groups] == [1, 3]  # linear weight | bias, bn weight/bias
    opt = LARS(groups, lr=1.0, momentum=0.0, weight_decay=0.5, eta=0.001, foreach=foreach)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    w, bias = list(model.parameters())[:2]
    d = torch.ones_like(w) + 0.5 * before[0]
    trust = 0.001 * before[0].norm() / d.norm()
    torch.testing.assert_close(w, before[0] - trust * d)  # adapted and decayed
    torch.testing.assert_close(bias, before[1] - 1.0)  # plain SGD step: no decay, no trust ratio


def test_multi_tensor_lars_makes_the_per_parameter_updates():
    from pretrain.engine.optim import LARS, param_groups

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)) for _ in "ab"]
    models[1].load_state_dict(models[0].state_dict())
    opts = [LARS(param_groups(m, 1e-4, True), lr=0.5, momentum=0.9, weight_decay=1e-4,
                 eta=0.02, foreach=f) for m, f in zip(models, (False, True))]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in models[0].parameters()]
        for model, opt in zip(models, opts):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_warmup_then_cosine():
    from pretrain.engine.optim import lr_at

    lrs = [lr_at(i, 100, 1.0, 10) for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5, abs=0.02)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 1e-3


def test_sampler_ranks_partition_the_single_process_batches():
    from pretrain.data import EpochBatchSampler

    one = EpochBatchSampler(103, 8, seed=3)
    two = [EpochBatchSampler(103, 8, rank=r, world=2, seed=3) for r in range(2)]
    for whole, part0, part1 in zip(one.epoch_batches(5), *(s.epoch_batches(5) for s in two)):
        assert whole == part0 + part1
    full = list(one.epoch_batches(5))
    assert len(full) == 103 // 8 and len({i for batch in full for i, _ in batch}) == 96
    assert list(one.epoch_batches(5, start_batch=4)) == full[4:]  # a resume mid-epoch
    assert list(one.epoch_batches(6)) != full
    # iterating runs on into the next epochs, from where set_epoch put it
    one.set_epoch(5, start_batch=10)
    stream = list(itertools.islice(one, 2 + 12 + 1))
    assert stream[:2] == full[10:] and stream[2:14] == list(one.epoch_batches(6))
    assert stream[14] == next(one.epoch_batches(7))


def test_every_loss_computes_in_float32_under_bf16_autocast():
    """Called inside bf16 autocast, as the engine calls them, the losses return float32 values
    equal to their value outside autocast (a float32 `@` under autocast would be bfloat16)."""
    from pretrain import losses

    g = torch.Generator().manual_seed(0)
    z1, z2, p = (torch.randn(16, 32, generator=g) for _ in range(3))
    queue = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=1)
    q, k = (torch.nn.functional.normalize(t, dim=1) for t in (z1, z2))
    std = torch.rand(16, 32, generator=g) + 0.1
    image, target = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    calls = {
        "nt_xent": lambda: losses.nt_xent(z1, z2, 0.1),
        "barlow_twins": lambda: losses.barlow_twins(z1, z2, 0.0051),
        "barlow_twins (InfoCL form)": lambda: losses.barlow_twins(z1, z2, 0.01, True, True),
        "negative_cosine": lambda: losses.negative_cosine(p, z2),
        "info_nce_with_queue": lambda: losses.info_nce_with_queue(q, k, queue, 0.2),
        "lbe_bound": lambda: losses.lbe_bound(z1 + 0.1 * z2, z1, 0.05),
        "gaussian_kl": lambda: losses.gaussian_kl(z1, std, z2, std * 2),
        "reconstruction_mse": lambda: losses.reconstruction_mse(image, target),
    }
    for name, call in calls.items():
        plain = call()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = call()
        assert mixed.dtype == torch.float32, name
        assert torch.allclose(mixed, plain, rtol=1e-6, atol=1e-7), (name, mixed, plain)
