"""Label-smoothed cross-entropy (ProGEO stage 2, over ``descriptor @ text_features^T``).

With ``p = softmax(logits)`` over ``C`` classes and smoothing ``eps``:

    loss = (1 - eps) * (-log p[y]) + eps * mean_c(-log p[c])

averaged over the batch. This is the same convention as
``torch.nn.functional.cross_entropy(logits, y, label_smoothing=eps)`` (target distribution
``(1 - eps) * onehot(y) + eps / C``, the uniform part *including* the true class) and as the
``CrossEntropyLabelSmooth`` of CLIP-ReID that ProGEO builds on; the tests check the equality.
It is computed in float32 with autocast disabled.
"""

from __future__ import annotations

import torch


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """Mean label-smoothed cross-entropy of ``logits`` (B, C) against class indices ``targets`` (B,)."""
    if logits.ndim != 2:
        raise ValueError(f"label_smoothed_cross_entropy expects logits of shape (B, C), got {tuple(logits.shape)}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"label smoothing epsilon must lie in [0, 1], got {epsilon}")
    n_classes = logits.shape[1]
    targets = targets.to(device=logits.device, dtype=torch.long)
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
        raise ValueError(
            f"targets must lie in [0, {n_classes}), got min {int(targets.min())} max {int(targets.max())}"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = torch.log_softmax(logits.float(), dim=1)
        nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        uniform = -log_p.mean(dim=1)
        return ((1.0 - epsilon) * nll + epsilon * uniform).mean()
