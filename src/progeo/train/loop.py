"""Small pieces every training loop uses: seeding, RNG snapshots, the NaN guard, AMP scaling.

Device resolution and autocast live in :mod:`progeo.device`; this module adds what only
training needs. Randomness that decides *what* a step trains on (which classes, which image,
which crop) is drawn from generators seeded by ``(seed, epoch, iteration)`` (:func:`step_seed`),
so a resumed run replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random

import numpy as np
import torch

from progeo.device import amp_dtype
from progeo.errors import ProgeoError

log = logging.getLogger(__name__)


class TrainingDiverged(ProgeoError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``step_seed(seed, epoch, iteration)``."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def numpy_rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(step_seed(*parts))


def torch_generator(*parts: int, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(step_seed(*parts))
    return gen


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """The global generators' state as (JSON-ready dict, tensors) for a checkpoint (no pickle)."""
    py_version, py_state, py_gauss = random.getstate()
    name, key, pos, has_gauss, gauss = np.random.get_state()
    meta = {"python": [py_version, list(py_state), py_gauss],
            "numpy": [str(name), [int(k) for k in key], int(pos), int(has_gauss), float(gauss)]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what :func:`rng_state` captured (missing parts are left alone)."""
    if "python" in meta:
        version, state, gauss = meta["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in meta:
        name, key, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8).cpu())
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.to(torch.uint8).cpu() for t in cuda[: torch.cuda.device_count()]])


def check_finite(loss: torch.Tensor | float, *, where: str, checkpoint: str | None = None) -> float:
    """The loss as a float; :class:`TrainingDiverged` when it is NaN or infinite."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if math.isfinite(value):
        return value
    kept = f"the last good checkpoint is kept in {checkpoint}" if checkpoint else "no checkpoint was written yet"
    raise TrainingDiverged(
        f"the loss became {value} at {where}; the run stopped before updating the weights and {kept}. "
        "Lower the learning rate (--lr / --classifiers-lr), turn off mixed precision (--no-amp) or check "
        "the input images, then resume with --resume"
    )


def make_grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A GradScaler that is active only for float16 autocast (CUDA without bfloat16)."""
    enabled = bool(amp) and amp_dtype(device) == torch.float16 and device.type == "cuda"
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


def cosine_lr(step: int, total: int, base_lr: float, warmup: int = 0, min_lr: float = 0.0) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay from ``base_lr`` to ``min_lr``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device | str) -> None:
    """Move an optimizer's state tensors (Adam moments; not its scalar ``step``) to ``device``."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and (key != "step" or value.dim() > 0):
                state[key] = value.to(device)


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Run the block with ``threads`` torch CPU threads (None: unchanged), restoring them after."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
