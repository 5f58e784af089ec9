"""Descriptor throughput of GeoLocalizer.describe (images/s), per backbone, image size and layout.

Random weights (no download): the tiny test models and the paper's RN50 and ViT-B/16, at 224
and 512 px, with channels-last memory layout on and off. Input: uint8 image batches (the
normalization on the device is part of the timed work, as in evaluation). Each configuration
gets one warm-up batch, then batches until ``--min-seconds`` have passed (at least one).

    .venv/bin/python benchmarks/bench_descriptors.py                 # the full table (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_descriptors.py --archs tiny-rn tiny-vit --sizes 64 128
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

from progeo.device import resolve_device
from progeo.models.geolocalizer import build_model

DEFAULT_BATCH = {"tiny-rn": 32, "tiny-vit": 32, "RN50": 8, "ViT-B-16": 4}


def bench(arch: str, size: int, channels_last: bool, device: torch.device, batch: int, min_seconds: float) -> tuple[float, int]:
    torch.manual_seed(0)
    model = build_model(arch, image_size=size, device=device)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    with model.inference(device, channels_last):  # the layout converted once, not per call
        model.describe(images, channels_last=channels_last)  # warm-up
        done, start = 0, time.perf_counter()
        while True:
            model.describe(images, channels_last=channels_last)
            done += batch
            if time.perf_counter() - start >= min_seconds:
                break
    return done / (time.perf_counter() - start), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["tiny-rn", "tiny-vit", "RN50", "ViT-B-16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default per architecture)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = resolve_device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'backbone':<10} {'px':>4} {'batch':>5} {'layout':<13} {'images/s':>9} {'ms/image':>9} {'images':>6}")
    for arch in args.archs:
        for size in args.sizes:
            batch = args.batch or DEFAULT_BATCH.get(arch, 8)
            for channels_last in (False, True):
                rate, n = bench(arch, size, channels_last, device, batch, args.min_seconds)
                layout = "channels-last" if channels_last else "contiguous"
                print(f"{arch:<10} {size:>4} {batch:>5} {layout:<13} {rate:>9.1f} {1000 / rate:>9.1f} {n:>6}", flush=True)


if __name__ == "__main__":
    main()
