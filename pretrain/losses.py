"""Loss functions of the base methods and the objectives' estimators: tensors in, scalar out.

Under DDP each takes this rank's part of the batch and gathers the rest itself, so that the mean
of the per-rank losses equals the loss of one process holding the whole batch (see
ssl2det/distributed.py). With one process the gathers are identities.

Every one computes in float32 (or float64 if given) whatever autocast context it is called in
(`in_float32`): under bf16 autocast a float32 `@` would come out in bfloat16, and NT-Xent's
logits at a low temperature, LBE's squared distances and Barlow's correlation lose precision.
"""

import functools
import math

import torch
import torch.nn.functional as F

from ssl2det.distributed import gather_with_grad, get_rank


def _at_least_float32(x):
    return x.float() if torch.is_tensor(x) and x.dtype in (torch.float16, torch.bfloat16) else x


def in_float32(loss):
    """Run `loss` with autocast off and its 16-bit tensor arguments cast to float32."""

    @functools.wraps(loss)
    def float32_loss(*args, **kwargs):
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device, enabled=False):
            return loss(*map(_at_least_float32, args),
                        **{k: _at_least_float32(v) for k, v in kwargs.items()})

    return float32_loss


@in_float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy over the 2N views of the global batch.

    Each of this rank's 2n views is an anchor; its positive is the other view of the same image
    and its negatives are the other 2N - 2 views of all ranks.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # 2N
    total = candidates.shape[0] // 2
    logits = torch.cat([z1, z2]) @ candidates.T / temperature
    own = get_rank() * n + torch.arange(n, device=z1.device)
    rows = torch.arange(2 * n, device=z1.device)
    self_index = torch.cat([own, own + total])
    positive = torch.cat([own + total, own])
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, positive)


@in_float32
def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float, l2_normalize: bool = False,
                 unbiased_std: bool = False) -> torch.Tensor:
    """Barlow Twins: the cross-correlation of batch-standardised embeddings pushed to identity.

    Standardisation and correlation span the global batch (every rank computes the same value).
    The paper standardises with an affine-free batch norm (biased variance, eps 1e-5); InfoCL's
    code first L2-normalises each embedding (`l2_normalize`) and divides by the unbiased
    standard deviation without eps (`unbiased_std`).
    """
    if l2_normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
    n = z1.shape[0]
    if unbiased_std:
        z1, z2 = ((z - z.mean(0)) / z.std(0) for z in (z1, z2))
    else:
        z1 = F.batch_norm(z1, None, None, training=True)
        z2 = F.batch_norm(z2, None, None, training=True)
    c = z1.T @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@in_float32
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z), z a target (no gradient), batch mean."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1).mean()


@in_float32
def info_nce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: query vs its key (positive) and the queue of past keys (negatives).

    q, k: (n, d) L2-normalised, k without gradient; queue: (K, d) L2-normalised.
    """
    positive = (q * k).sum(1, keepdim=True)
    negatives = q @ queue.T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@in_float32
def lbe_bound(h: torch.Tensor, mu: torch.Tensor, rho: float) -> torch.Tensor:
    """InfoCL's lower-bound estimate of I(h; v) for a stochastic feature h = mu(v) + sigma*eps.

    The InfoNCE bound with the Gaussian-channel critic f(h, v) = -rho * ||h - mu(v)||^2 over the
    global batch of N: mean_i [f(h_i, v_i) - logsumexp_j f(h_i, v_j)] + log N. With
    rho = 1 / (2 sigma^2) the critic is the true log-likelihood, and the bound lies below
    min(I(h; v), log N). The positive term f(h_i, v_i) = -rho * sigma^2 * ||eps_i||^2 carries no
    gradient; InfoCL's code omits it, which shifts the value by a constant only.
    h, mu: this rank's (n, d); the candidates mu_j come from all ranks.
    """
    candidates = gather_with_grad(mu)
    sq_dist = (h.pow(2).sum(1, keepdim=True) - 2 * h @ candidates.T
               + candidates.pow(2).sum(1)).clamp_min(0)
    positive = -rho * (h - mu).pow(2).sum(1)
    return (positive - torch.logsumexp(-rho * sq_dist, dim=1)).mean() + math.log(len(candidates))


@in_float32
def gaussian_kl(mu_p, std_p, mu_q, std_q) -> torch.Tensor:
    """KL(N(mu_p, std_p^2) || N(mu_q, std_q^2)) for diagonal Gaussians, summed over dimensions
    and averaged over the batch."""
    var_p, var_q = std_p.pow(2), std_q.pow(2)
    kl = torch.log(std_q / std_p) + (var_p + (mu_p - mu_q).pow(2)) / (2 * var_q) - 0.5
    return kl.sum(1).mean()


@in_float32
def reconstruction_mse(reconstruction, target, mask=None) -> torch.Tensor:
    """Mean squared error per pixel, optionally only where `mask` (N, 1, H, W) is 1."""
    err = (reconstruction - target).pow(2)
    if mask is None:
        return err.mean()
    mask = mask.expand_as(err)
    return (err * mask).sum() / mask.sum().clamp_min(1)
