"""Several processes, GPUs or nodes: torch.distributed set up from the ``torchrun`` environment.

``torchrun --nproc-per-node 4 -m progeo train stage2 ...`` runs the same command in 4 processes;
:func:`init_distributed` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the process
group (``nccl`` on CUDA, ``gloo`` on CPU). Without those variables everything is a one-process
no-op. Only rank 0 writes files (:attr:`DistInfo.is_main`).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from progeo.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False  # this code created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: torch.device, timeout_s: float = 1800.0) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun; returns the info and this rank's device.

    On CUDA each process takes ``cuda:LOCAL_RANK``. A group already initialised by the caller
    (e.g. a test) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        return info, _rank_device(device, info)
    if not launched_by_torchrun():
        return DistInfo(), device
    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this PyTorch build; run without torchrun")
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)), True)
    device = _rank_device(device, info)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                            **({"device_id": device} if device.type == "cuda" else {}))
    log.info("process %d of %d joined the %s process group (device %s)", info.rank, info.world_size, backend, device)
    return info, device


def _rank_device(device: torch.device, info: DistInfo) -> torch.device:
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    index = info.local_rank if device.index is None else device.index
    if index >= count:
        raise ConfigError(f"process with LOCAL_RANK {info.local_rank} needs cuda:{index}, but only {count} GPU(s) are visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cleanup(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_mean_grads(parameters: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of ``parameters`` over all processes (one flat all-reduce)."""
    if not info.distributed:
        return
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """Mean of a float over all processes (for logging)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def broadcast_float(value: float, info: DistInfo, device: torch.device, src: int = 0) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=src)
    return float(t.item())


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``model`` inside DistributedDataParallel when distributed, else ``model`` itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def rank_slice(batch_size: int, info: DistInfo) -> slice:
    """The part of a global batch this process trains on (disjoint, equal slices)."""
    if batch_size % info.world_size:
        raise ConfigError(f"batch_size={batch_size} is not divisible by the {info.world_size} processes; "
                          f"use a multiple of {info.world_size}")
    per = batch_size // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)
