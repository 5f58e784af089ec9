"""Descriptor heads: what turns backbone features into a place descriptor.

- :class:`GeMHead` (ResNet backbones; the paper's and CosPlace's aggregation): channel-wise L2
  norm of the last feature map -> GeM pooling (p = 3, learnable) -> flatten -> linear to
  ``fc_output_dim`` -> L2 norm. It is an ``nn.Sequential`` so that its state-dict keys are
  CosPlace's (``aggregation.1.p``, ``aggregation.3.weight``, ``aggregation.3.bias``).
- :class:`ClipEmbeddingHead` (ViT backbones): CLIP's own image embedding, optionally
  L2-normalized. The paper's model returns the raw embedding (no normalization), so that is the
  default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class L2Norm(nn.Module):
    """x / max(||x||_2, eps) along ``dim`` (dim 1: channels of a feature map or features of a batch)."""

    def __init__(self, dim: int = 1, eps: float = 1e-12):
        super().__init__()
        self.dim, self.eps = dim, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class GeM(nn.Module):
    """Generalized mean pooling over H x W: (mean(clamp(x, eps)^p))^(1/p), p learnable (init 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        p_tensor = torch.ones(1) * p
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.to(torch.float32)
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1), keepdim=True)
        return pooled.pow(1.0 / p).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


class Flatten(nn.Module):
    """B x C x 1 x 1 -> B x C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:] != (1, 1):
            raise ValueError(f"Flatten expects B x C x 1 x 1, got {tuple(x.shape)}")
        return x[:, :, 0, 0]


class GeMHead(nn.Sequential):
    """L2Norm(channels) -> GeM -> Flatten -> Linear(features_dim, fc_output_dim) -> L2Norm."""

    def __init__(self, features_dim: int, fc_output_dim: int):
        super().__init__(L2Norm(dim=1), GeM(), Flatten(), nn.Linear(features_dim, fc_output_dim), L2Norm(dim=1))
        self.features_dim, self.fc_output_dim = features_dim, fc_output_dim


class ClipEmbeddingHead(nn.Module):
    """Passes CLIP's image embedding through, L2-normalized if ``normalize`` (paper: not)."""

    def __init__(self, normalize: bool = False):
        super().__init__()
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=-1) if self.normalize else x

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"
