"""Loss functions of the base methods: tensors in, scalar tensor out.

Under DDP each takes this rank's part of the batch and gathers the rest itself, so that the mean
of the per-rank losses equals the loss of one process holding the whole batch (see
engine/distributed.py). With one process the gathers are identities.
"""

import torch
import torch.nn.functional as F

from .engine.distributed import gather_with_grad, get_rank


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


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """Barlow Twins: the cross-correlation of batch-standardised embeddings pushed to identity.

    Standardisation and correlation span the global batch (every rank computes the same value);
    standardisation is an affine-free batch norm (biased variance, eps 1e-5), as in the paper.
    """
    z1, z2 = gather_with_grad(z1).float(), gather_with_grad(z2).float()
    n = z1.shape[0]
    z1 = F.batch_norm(z1, None, None, training=True)
    z2 = F.batch_norm(z2, None, None, training=True)
    c = z1.T @ z2 / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z), z a target (no gradient), batch mean."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1).mean()


def info_nce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: query vs its key (positive) and the queue of past keys (negatives).

    q, k: (n, d) L2-normalised, k without gradient; queue: (K, d) L2-normalised.
    """
    positive = (q * k).sum(1, keepdim=True)
    negatives = q @ queue.T
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
