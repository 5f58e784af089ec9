"""Stateless integer hashing and value noise for procedural textures (vectorized numpy).

Textures are functions of world coordinates and object seeds, never of the camera, so the same
wall looks the same from every view and every run.
"""

from __future__ import annotations

import numpy as np

_K1 = np.uint32(0x9E3779B1)
_K2 = np.uint32(0x85EBCA77)
_K3 = np.uint32(0xC2B2AE3D)
_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_INV = np.float32(1.0 / 4294967296.0)


def _u32(a) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        a = np.floor(a).astype(np.int64)
    return a.astype(np.uint32)


def hash_u32(a, b=0, c=0) -> np.ndarray:
    """A well-mixed 32-bit hash of up to three integer (or floored float) arrays."""
    with np.errstate(over="ignore"):
        h = _u32(a) * _K1 ^ _u32(b) * _K2 ^ _u32(c) * _K3
        h = h ^ (h >> np.uint32(16))
        h = h * _M1
        h = h ^ (h >> np.uint32(15))
        h = h * _M2
        h = h ^ (h >> np.uint32(16))
    return h


_RAND = None


def hash_rows(col_hash, row) -> np.ndarray:
    """Fast per-pixel noise in [0, 1) from a per-column hash (uint32, broadcast) and a row coordinate.

    Each column reads a random table at its own offset, so neighbouring columns are independent;
    about 4x cheaper than :func:`hash01` on a full frame.
    """
    idx = np.asarray(row).astype(np.int32) + (col_hash & np.uint32(4095)).astype(np.int32)
    idx &= 4095
    return _RAND[idx]


def hash01(a, b=0, c=0) -> np.ndarray:
    """Hash to float32 in [0, 1)."""
    return hash_u32(a, b, c).astype(np.float32) * _INV


def _tileable(size: int = 512, cell: int = 8, seed: int = 0) -> np.ndarray:
    period = size // cell
    t = (np.arange(size, dtype=np.float32) + 0.5) / cell
    x, y = np.meshgrid(t, t, indexing="ij")
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    ix, iy = x0.astype(np.int64), y0.astype(np.int64)

    def h(a, b):
        return hash01(a % period, b % period, seed)

    top = h(ix, iy) + (h(ix + 1, iy) - h(ix, iy)) * fx
    bot = h(ix, iy + 1) + (h(ix + 1, iy + 1) - h(ix, iy + 1)) * fx
    return (top + (bot - top) * fy).astype(np.float32)


_RAND = hash01(np.arange(4096), 12345)
_TEX = _tileable()
_TEX_FLAT = _TEX.reshape(-1)


def tex_noise(x, y) -> np.ndarray:
    """Smooth value noise in [0, 1) with unit lattice spacing, from a tileable texture (period 64)."""
    ix = (np.asarray(x) * 8.0).astype(np.int32) & 511
    iy = (np.asarray(y) * 8.0).astype(np.int32) & 511
    return _TEX_FLAT[(ix << 9) | iy]
