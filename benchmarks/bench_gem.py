"""GEM: the run_gem_report table of a synthetic world, and the cold/warm time of a gazetteer's text features.

Needs a world and a pretrained tiny CLIP (no download):

    .venv/bin/progeo synth --out /tmp/w --preset default
    .venv/bin/progeo pretrain --world /tmp/w --out-dir /tmp/pt
    .venv/bin/python benchmarks/bench_gem.py --world /tmp/w --weights /tmp/pt/clip.safetensors

The first (cold) run extracts the image features into a fresh cache; ``--repeat 2`` times a
second run that reuses them. Prints the metrics table, then seconds per step.

Then (unless ``--text-places none``) the zero-shot text features of a gazetteer-sized candidate
list (default ``world:100000``, zeroshot's default: 6,139 GeoNames cities x 8 city templates;
``world:15000`` has 32,862) with the same model: without the cache, encoded into a fresh cache
(cold), read back (warm). ``--world`` is
optional (text benchmark only), and without ``--weights`` the backbone is randomly initialised
(the same cost):

    .venv/bin/python benchmarks/bench_gem.py --backbone tiny-rn --text-places world:100000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from progeo.geo.gem_report import run_gem_report


def bench_text_features(places_spec: str, weights: str | None, backbone: str, device: str, batch_size: int) -> str:
    """Markdown table: seconds to build the city-level zero-shot classifier of ``places_spec`` cold, warm, uncached."""
    from progeo.geo.features import load_gem_model
    from progeo.geo.zeroshot import build_zeroshot_classifier, load_candidate_places

    places = load_candidate_places(places_spec)
    gem = load_gem_model(backbone, weights, device)
    build_zeroshot_classifier(gem.clip, places.__class__(places.places[:4]), "city", device=device, cache=False)  # warm-up
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gem_text_") as cache:
        for name, use_cache in (("no cache", False), ("cold (encode + write cache)", True), ("warm (cache hit)", True)):
            t = time.perf_counter()
            clf = build_zeroshot_classifier(gem.clip, places, "city", None, device=device, batch_size=batch_size,
                                            cache_dir=cache, cache=use_cache)
            seconds = time.perf_counter() - t
            size = clf.text_cache_file.stat().st_size / 2**20 if clf.text_cache_file else 0.0
            rows.append(f"| {name} | {seconds:.2f} | {'yes' if clf.text_cache_hit else 'no'} | {size:.1f} |")
    texts = len(places) * len(clf.templates)
    head = (f"text features of {places_spec}: {len(places)} cities x {len(clf.templates)} templates = {texts} texts, "
            f"{gem.spec.describe()} ({gem.clip.embed_dim}-d), device {device}\n\n"
            "| run | seconds | cache hit | cache file MiB |\n|---|---:|---|---:|")
    return "\n".join([head, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default=None, help="synthetic world folder (progeo synth); none: text benchmark only")
    parser.add_argument("--weights", default=None, help="CLIP weights, e.g. RUN/clip.safetensors of progeo pretrain "
                                                        "(needed with --world; default: random init)")
    parser.add_argument("--backbone", default="tiny-rn", help="architecture of --weights (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1, help="runs (the first with an empty feature cache)")
    parser.add_argument("--out", default=None, help="write the report files here")
    parser.add_argument("--text-places", default="world:100000",
                        help="candidates of the text-feature benchmark: world:N, a places CSV, or none (default: %(default)s)")
    parser.add_argument("--text-batch-size", type=int, default=256, help="texts per batch (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.world:
        if not args.weights:
            parser.error("--world needs --weights (a CLIP pretrained on the world, e.g. by progeo pretrain)")
        bench_report(args)
    if args.text_places.lower() != "none":
        print()
        print(bench_text_features(args.text_places, args.weights, args.backbone, args.device, args.text_batch_size))


def bench_report(args: argparse.Namespace) -> None:
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
