"""Where tensors run: device resolution, mixed precision and memory layout.

Every model entry point takes a ``device`` argument (``"cpu"``, ``"cuda"``, ``"cuda:1"``,
``"mps"`` or ``"auto"``); nothing in progeo calls ``.cuda()``. Mixed precision is switched on only
where it pays and is supported (CUDA: bfloat16 when the GPU has it, else float16; MPS: float16);
on CPU the default is full float32, because CPU autocast is slower than float32 for the
convolutions and small matmuls of these models on ordinary hardware.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from progeo.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a :class:`torch.device` that exists on this machine.

    ``None`` and ``"auto"`` pick CUDA, then MPS, then CPU. Asking for a device that is not
    available is a :class:`ConfigError` (not a late CUDA crash).
    """
    if isinstance(device, torch.device):
        spec = str(device)
    else:
        spec = (device or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {spec!r} is not a valid torch device; use cpu, cuda, cuda:N, mps or auto") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} asked for but CUDA is not available here; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps" and not _mps_available():
        raise ConfigError(f"device {spec!r} asked for but MPS is not available here; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {spec!r} is not supported; use cpu, cuda, cuda:N, mps or auto")
    return dev


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def amp_dtype(device: str | torch.device) -> torch.dtype | None:
    """The reduced precision dtype autocast should use on ``device``, or None for float32 only."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "mps" and torch.amp.autocast_mode.is_autocast_available("mps"):
        return torch.float16
    return None


def supports_amp(device: str | torch.device) -> bool:
    """True when :func:`autocast` would actually enable mixed precision on ``device``."""
    return amp_dtype(device) is not None


@contextlib.contextmanager
def autocast(device: str | torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed precision for the block where the device supports it; a no-op elsewhere (CPU)."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    dtype = amp_dtype(dev) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=dev.type, dtype=dtype):
        yield


def prefers_channels_last(device: str | torch.device) -> bool:
    """Whether ResNet convolutions on ``device`` should run with NHWC tensors by default.

    CUDA: yes (tensor-core convolutions want NHWC). CPU: no; benchmarks/bench_descriptors.py gave
    no consistent gain for RN50 on the project's shared 2-core CPU (from -12 % to +50 % between
    runs), so contiguous stays the default there (``describe(channels_last=True)`` to try). MPS: no.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return dev.type == "cuda"


def to_channels_last(obj):
    """Return a module or a 4-D tensor in channels-last memory layout (other tensors unchanged)."""
    if isinstance(obj, torch.nn.Module):
        return obj.to(memory_format=torch.channels_last)
    if isinstance(obj, torch.Tensor) and obj.dim() == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj
