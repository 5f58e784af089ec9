"""``progeo demo``: run the main job on the built-in synthetic world."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on the built-in synthetic world",
        description="Generate (or reuse) the synthetic world, pretrain a tiny CLIP on its captions, learn ProGEO "
                    "prompts (stage 1), train the image encoder with them (stage 2) and the CosPlace baseline, "
                    "evaluate all on day/night/occlusion queries, and run GEM city/country classification. "
                    "Writes report.md, report.json, recalls.png and prediction grids into --out.")
    p.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                   help="folder for the world and every result (default: %(default)s)")
    p.add_argument("--preset", choices=("tiny", "small", "default"), default=None,
                   help="world size (default: default, or tiny with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and of training (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="processes for rendering (default: all cores)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny world and budget (smoke test, under 2 minutes)")
    p.add_argument("--no-gem", action="store_true", help="skip the GEM city/country classification step")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from progeo.demo import DemoConfig, run_demo

    cfg = DemoConfig(out_dir=args.out, preset=args.preset, seed=args.seed, workers=args.workers,
                     quick=args.quick, device=args.device, gem=not args.no_gem)
    result = run_demo(cfg)
    print(result.markdown)
    print(f"report, plot and grids written to {args.out}")
    return 0
