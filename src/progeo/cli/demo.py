"""``progeo demo``: run the main job on the built-in synthetic world."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on the built-in synthetic world",
        description="Generate (or reuse) the synthetic world, validate it and print its summary.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                   help="folder for the world and every result (default: %(default)s)")
    p.add_argument("--preset", choices=("tiny", "small", "default"), default=None,
                   help="world size (default: default, or tiny with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of training (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="processes for rendering (default: all cores)")
    p.add_argument("--quick", action="store_true", help="a small world and budget (smoke test, ~2 minutes)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from progeo.demo import DemoConfig, run_demo

    preset = args.preset or ("tiny" if args.quick else "default")
    cfg = DemoConfig(out_dir=args.out, preset=preset, seed=args.seed, workers=args.workers, quick=args.quick)
    result = run_demo(cfg)
    for report in result.reports:
        print(report.format())
        print()
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(f"synthetic world ready in {result.world_dir} ({timing})")
    return 0
