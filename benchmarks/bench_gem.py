"""GEM on a synthetic world: the run_gem_report table (zero-shot and linear probe, city and country) and its time.

Needs a world and a pretrained tiny CLIP (no download):

    .venv/bin/progeo synth --out /tmp/w --preset default
    .venv/bin/progeo pretrain --world /tmp/w --out-dir /tmp/pt
    .venv/bin/python benchmarks/bench_gem.py --world /tmp/w --weights /tmp/pt/clip.safetensors

The first (cold) run extracts the image features into a fresh cache; ``--repeat 2`` times a
second run that reuses them. Prints the metrics table, then seconds per step.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from progeo.geo.gem_report import run_gem_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="synthetic world folder (progeo synth)")
    parser.add_argument("--weights", required=True, help="CLIP weights, e.g. RUN/clip.safetensors of progeo pretrain")
    parser.add_argument("--backbone", default="tiny-rn", help="architecture of --weights (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs (the first with an empty feature cache)")
    parser.add_argument("--out", default=None, help="write the report files here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    timings = []
    with tempfile.TemporaryDirectory(prefix="bench_gem_") as cache:
        for i in range(args.repeat):
            t = time.perf_counter()
            report = run_gem_report(args.world, args.weights, args.backbone, args.out, device=args.device,
                                    num_workers=args.num_workers, cache_dir=cache)
            timings.append(("cold" if i == 0 else "warm", time.perf_counter() - t, report["seconds"]))
    print(report["markdown"])
    print(f"\nimages: train {report['train_images']}, val {report['val_images']}, test {report['test_images']}")
    steps = list(timings[0][2])
    print("\n| run | wall s | " + " | ".join(steps) + " |")
    print("|---|---:|" + "---:|" * len(steps))
    for name, wall, seconds in timings:
        print(f"| {name} | {wall:.1f} | " + " | ".join(f"{seconds[s]:.1f}" for s in steps) + " |")


if __name__ == "__main__":
    main()
