"""CosFace: the large-margin cosine classifier used per CosPlace group in stage 2.

Reference formula (Wang et al., CVPR 2018): with L2-normalised descriptor ``x`` and class
weights ``W``, ``cos = x_hat @ W_hat^T`` and the training logits are
``s * (cos - m * onehot(y))``; cross-entropy on these logits is the CosFace loss.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CosFace(nn.Module):
    """Large-margin cosine classifier with weights ``(n_classes, dim)`` (Xavier-uniform init).

    ``forward(x, y)`` returns the margin logits for training (feed them to
    ``F.cross_entropy``); :meth:`cosine` and :meth:`logits` give plain scores for inference.

    Normalisation and the matrix product always run in float32 with autocast disabled, so
    the module is safe under ``torch.autocast`` (fp16/bf16): a half-precision descriptor is
    upcast, and the logits are float32. The weight may be stored in any dtype.
    """

    def __init__(self, dim: int, n_classes: int, s: float = 30.0, m: float = 0.4) -> None:
        super().__init__()
        if dim <= 0 or n_classes <= 0:
            raise ValueError(f"CosFace needs dim > 0 and n_classes > 0, got dim={dim}, n_classes={n_classes}")
        self.dim = int(dim)
        self.n_classes = int(n_classes)
        self.s = float(s)
        self.m = float(m)
        self.weight = nn.Parameter(torch.empty(self.n_classes, self.dim))
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_classes={self.n_classes}, s={self.s}, m={self.m}"

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, n_classes)`` in float32 between descriptors and class weights."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"CosFace expects descriptors of shape (B, {self.dim}), got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = F.normalize(x.float(), dim=1)
            w32 = F.normalize(self.weight.float(), dim=1)
            return x32 @ w32.t()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits ``s * cos`` (no margin); ``argmax`` gives the predicted class."""
        return self.s * self.cosine(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training logits ``s * (cos - m * onehot(y))`` in float32."""
        cos = self.cosine(x)
        y = y.to(device=cos.device, dtype=torch.long)
        if y.shape != (cos.shape[0],):
            raise ValueError(f"CosFace labels must have shape ({cos.shape[0]},), got {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(
                f"CosFace labels must lie in [0, {self.n_classes}), got min {int(y.min())} max {int(y.max())}"
            )
        margin = torch.zeros_like(cos).scatter_(1, y.unsqueeze(1), self.m)
        return self.s * (cos - margin)
