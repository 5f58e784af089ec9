"""Supervised contrastive loss between two sets of features (ProGEO stage 1).

For row features ``A`` (B x d) with labels ``a_labels`` and column features ``B`` (B' x d)
with labels ``b_labels``, the score matrix is ``S = A B^T / tau`` and

    loss_i = - mean_{j : b_labels[j] == a_labels[i]} log_softmax(S[i])[j]

The loss is the mean of ``loss_i`` over the rows that have at least one positive column.
Rows without a positive are *excluded* from the mean (they are not counted as zero); when no
row has a positive the result is a zero that keeps the autograd graph (``0 * S.sum()``), so a
training step on such a batch is a no-op rather than a NaN.

As the ProGEO authors do, features are used raw by default (``normalize=False``, ``tau=1``);
``normalize=True`` L2-normalises both sides first (the usual SupCon set-up, then use a small
``tau`` such as 0.07). Everything is computed in float32 with autocast disabled.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def supcon_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    a_labels: torch.Tensor,
    b_labels: torch.Tensor,
    tau: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """SupCon of rows ``a`` against columns ``b`` (see the module docstring); a float32 scalar."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"supcon_loss needs (B, d) and (B', d) features, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a_labels.shape != (a.shape[0],) or b_labels.shape != (b.shape[0],):
        raise ValueError(
            f"supcon_loss labels must have shapes ({a.shape[0]},) and ({b.shape[0]},), "
            f"got {tuple(a_labels.shape)} and {tuple(b_labels.shape)}"
        )
    if tau <= 0:
        raise ValueError(f"supcon_loss temperature tau must be > 0, got {tau}")
    with torch.autocast(device_type=a.device.type, enabled=False):
        a32, b32 = a.float(), b.float().to(a.device)
        if normalize:
            a32, b32 = F.normalize(a32, dim=1), F.normalize(b32, dim=1)
        scores = a32 @ b32.t() / tau
        log_prob = torch.log_softmax(scores, dim=1)
        positive = a_labels.to(a.device).unsqueeze(1) == b_labels.to(a.device).unsqueeze(0)
        positives_per_row = positive.sum(dim=1)
        has_positive = positives_per_row > 0
        if not bool(has_positive.any()):
            return scores.sum() * 0.0
        # masked_fill, not multiplication: a -inf log-prob outside the positives must not give NaN
        pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1)
        row_loss = -pos_log_prob[has_positive] / positives_per_row[has_positive]
        return row_loss.mean()


def image_text_supcon(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 1.0,
    normalize: bool = False,
) -> torch.Tensor:
    """Stage-1 loss: ``SupCon(image -> text) + SupCon(text -> image)``.

    ``text_feats[i]`` is the feature of the prompt of ``labels[i]`` (the batch's own labels, so
    repeated labels give repeated texts); rows and columns share ``labels``.
    """
    i2t = supcon_loss(image_feats, text_feats, labels, labels, tau=tau, normalize=normalize)
    t2i = supcon_loss(text_feats, image_feats, labels, labels, tau=tau, normalize=normalize)
    return i2t + t2i
