"""Soft-margin triplet loss on a batch of descriptors with class labels (optional in stage 2).

For an anchor ``a``, a positive ``p`` (same label, ``p != a``) and a negative ``n`` (another
label), with Euclidean distance ``d``:

    l(a, p, n) = log(1 + exp(d(a, p) - d(a, n)))   (softplus, no margin hyper-parameter)

Mining (``mining=``):

- ``"batch_hard"`` (default, Hermans et al. 2017): for every anchor that has at least one
  positive and one negative in the batch, take its *farthest* positive and *nearest*
  negative; the loss is the mean of ``l`` over those anchors.
- ``"all"``: every valid triplet ``(a, p, n)``; the loss is the mean of ``l`` over them.

A batch with no valid triplet (a single class, or every label distinct) gives a zero that
keeps the autograd graph. Distances are computed in float32 with autocast disabled; the
squared distance is clamped at 1e-12 before the square root so gradients stay finite.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

MINING_MODES = ("batch_hard", "all")


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distance matrix ``(B, B)`` of the rows of ``x`` in float32 (diagonal ~1e-6, not 0)."""
    x = x.float()
    sq = x.pow(2).sum(dim=1)
    d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (x @ x.t())
    return d2.clamp_min(1e-12).sqrt()


def soft_triplet_loss(descriptors: torch.Tensor, labels: torch.Tensor, mining: str = "batch_hard") -> torch.Tensor:
    """Soft-margin triplet loss over a batch (see the module docstring for the mining)."""
    if mining not in MINING_MODES:
        raise ValueError(f"unknown triplet mining {mining!r}; choose one of {', '.join(MINING_MODES)}")
    if descriptors.ndim != 2:
        raise ValueError(f"soft_triplet_loss expects descriptors of shape (B, d), got {tuple(descriptors.shape)}")
    if labels.shape != (descriptors.shape[0],):
        raise ValueError(f"labels must have shape ({descriptors.shape[0]},), got {tuple(labels.shape)}")
    with torch.autocast(device_type=descriptors.device.type, enabled=False):
        dist = pairwise_distances(descriptors)
        labels = labels.to(descriptors.device)
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        eye = torch.eye(len(labels), dtype=torch.bool, device=descriptors.device)
        pos_mask = same & ~eye
        neg_mask = ~same
        if mining == "batch_hard":
            valid = pos_mask.any(dim=1) & neg_mask.any(dim=1)
            if not bool(valid.any()):
                return dist.sum() * 0.0
            hardest_pos = dist.masked_fill(~pos_mask, float("-inf")).amax(dim=1)
            hardest_neg = dist.masked_fill(~neg_mask, float("inf")).amin(dim=1)
            return F.softplus(hardest_pos[valid] - hardest_neg[valid]).mean()
        # all valid triplets: (a, p, n) with pos_mask[a, p] and neg_mask[a, n]
        triplet_mask = pos_mask.unsqueeze(2) & neg_mask.unsqueeze(1)
        if not bool(triplet_mask.any()):
            return dist.sum() * 0.0
        diff = dist.unsqueeze(2) - dist.unsqueeze(1)  # diff[a, p, n] = d(a, p) - d(a, n)
        return F.softplus(diff[triplet_mask]).mean()
