"""Shared fixtures, and the rule that no test touches the network."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

import pytest


class NetworkUsed(RuntimeError):
    """A test resolved or connected to a host that is not this machine."""


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "", "localhost"):
        return True
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _refuse(host) -> NetworkUsed:
    return NetworkUsed(f"a test tried to reach {host!r}; tests must not touch the network: mock the call "
                       f"(e.g. monkeypatch socket.create_connection) or use the local synthetic data")


def pytest_configure(config):
    """From collection on, resolving or connecting to a non-local host raises :class:`NetworkUsed`
    (not an ``OSError``, which code would take for "offline" and carry on)."""
    real_getaddrinfo, real_connect, real_connect_ex = socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        if not _is_local(host):
            raise _refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def checked(real):
        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
                raise _refuse(address[0])
            return real(self, address)
        return connect

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = checked(real_connect)
    socket.socket.connect_ex = checked(real_connect_ex)


@pytest.fixture(scope="module")
def restore_threads():
    """Give torch and faiss back their thread counts after a module whose CLI calls pass ``--threads``.
    Use with ``pytestmark = pytest.mark.usefixtures("restore_threads")``."""
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and spinning OpenMP threads make the run
    very slow when other processes share the cores; one thread keeps these tests fast anywhere.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A synthetic world of the ``tiny`` preset (3 cities, 64 px, ~1.8 k images), built once per session.

    Layout: see :mod:`progeo.data.synthetic` (train/, val/, test/, *_images_paths.txt,
    captions.tsv, labels.csv, world.json). Treat it as read-only.
    """
    from progeo.data.synthetic import generate_world

    out = tmp_path_factory.mktemp("synthetic") / "tiny_world"
    generate_world(out, "tiny", seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def pretrained_tiny_clip(tiny_world, tmp_path_factory) -> tuple[Path, str]:
    """``(weights file, backbone)`` of a tiny CLIP pretrained briefly on ``tiny_world``'s captions, once per session.

    A small budget (6 epochs of the 1,296 captioned train images, 120 steps, ~20-35 s on 2 cores):
    zero-shot city accuracy ~68 % (chance 33 %), far from converged. Load it with
    ``load_clip(backbone, weights=weights)``.
    """
    import torch

    from progeo.config import PretrainConfig
    from progeo.train.pretrain import run_pretrain

    cfg = PretrainConfig(world=str(tiny_world), backbone="tiny-rn", out_dir=str(tmp_path_factory.mktemp("pretrain")),
                         epochs=6, batch_size=64, lr=3e-3, warmup_steps=10, device="cpu",
                         progress=False, tensorboard=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small gain nothing from 2 threads, which stall 4-10x on shared cores
    try:
        return run_pretrain(cfg).checkpoint, cfg.backbone
    finally:
        torch.set_num_threads(threads)
