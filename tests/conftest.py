"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


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
