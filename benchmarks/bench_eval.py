"""Evaluation throughput (images/s): batched queries vs the one-query-at-a-time baseline.

Runs the ``progeo eval`` pipeline (:func:`progeo.evaluate`: decode,
describe, flat faiss index, search, recall) on the test set of synthetic worlds, every query
folder, once with query batches of ``--batch-size`` and once with ``query_batch_size=1``, and
checks that both give the same recalls. The model is a tiny architecture with random weights
(seed 0): the figures measure the pipeline, not a trained network. Worlds are generated into
``--cache`` when missing (the default preset takes a few CPU minutes), or given with ``--world``.

    .venv/bin/python benchmarks/bench_eval.py                           # tiny + default worlds
    .venv/bin/python benchmarks/bench_eval.py --presets tiny --threads 1 --workers 0 2
    .venv/bin/python benchmarks/bench_eval.py --world default=/path/to/world
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import faiss
import torch

from progeo.eval.evaluate import EvalConfig, evaluate
from progeo.models import build_model


def world_folder(preset: str, cache: Path, given: dict[str, str]) -> Path:
    if preset in given:
        return Path(given[preset])
    out = cache / preset
    if not (out / "world.json").is_file():
        from progeo.data.synthetic import generate_world

        print(f"generating the {preset!r} world into {out} ...", flush=True)
        generate_world(out, preset, seed=0, overwrite=out.exists())
    return out


def run(model, root: Path, batch_size: int, query_batch_size: int | None, workers: int, device: str = "cpu") -> dict:
    cfg = EvalConfig(batch_size=batch_size, query_batch_size=query_batch_size, num_workers=workers, device=device,
                     progress=False)
    start = time.perf_counter()
    results = evaluate(model, root / "test", "all", cfg, model_name="bench")
    total = time.perf_counter() - start
    database_num = len(results[0].database.rows)
    queries_num = sum(len(r.queries.paths) for r in results)
    query_seconds = sum(r.seconds["describe_queries"] + r.seconds["search"] for r in results)
    return {
        "database": database_num, "queries": queries_num,
        "db_rate": database_num / results[0].seconds["describe_database"],
        "query_rate": queries_num / query_seconds, "total_rate": (database_num + queries_num) / total,
        "recalls": [r.recall.recalls for r in results], "r1": results[0].recall.recalls[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "default"], choices=("tiny", "small", "default"))
    parser.add_argument("--world", nargs="*", default=[], metavar="PRESET=DIR", help="use an existing world")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "progeo_bench_worlds"))
    parser.add_argument("--arch", default="tiny-vit", help="tiny-vit or tiny-rn (random weights)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="decoding processes to try")
    parser.add_argument("--threads", type=int, default=None, help="torch/faiss threads (default: theirs)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    given = dict(w.split("=", 1) for w in args.world)
    torch.manual_seed(0)
    model = build_model(args.arch).eval()
    print(f"{args.arch} ({model.image_size[0]} px input, {model.descriptor_dim}-d) on {args.device}, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = (f"{'world':<8} {'db':>6} {'queries':>7} {'workers':>7} {'query batch':>11} {'db img/s':>9} "
              f"{'query img/s':>11} {'all img/s':>9} {'R@1':>6} {'same recalls':>12}")
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        root = world_folder(preset, Path(args.cache), given)
        for workers in args.workers:
            run(model, root, args.batch_size, None, workers, args.device)  # warm-up: page cache, start-up paths
            batched = run(model, root, args.batch_size, None, workers, args.device)
            single = run(model, root, args.batch_size, 1, workers, args.device)
            for label, r in ((str(args.batch_size), batched), ("1", single)):
                same = "yes" if single["recalls"] == batched["recalls"] else "NO"
                print(f"{preset:<8} {r['database']:>6} {r['queries']:>7} {workers:>7} {label:>11} {r['db_rate']:>9.0f} "
                      f"{r['query_rate']:>11.0f} {r['total_rate']:>9.0f} {r['r1']:>6.1f} {same:>12}", flush=True)
            print(f"{'':<8} queries batched / one by one: {batched['query_rate'] / single['query_rate']:.1f}x")


if __name__ == "__main__":
    main()
