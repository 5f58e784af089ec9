"""Index kinds at SF-XL scale: build time, search time, memory and R@1 against exact search.

Database: ``--database-num`` (2.8 M, the SF-XL test database) L2-normalized descriptors of
``--dim`` (512), from one of two sources.

``--descriptors DIR`` (what the issue asks for): a trained model's descriptors of a test set,
saved by ``progeo eval --save-descriptors DIR`` (DIR holds ``database/`` and ``queries*/``). Each
real database descriptor is replicated with noise up to the target size; a model with fewer
dimensions (the demo's tiny-rn gives 64) is lifted to ``--dim`` by a random orthonormal map,
which keeps every inner product (the intrinsic dimension stays the model's). The noise is drawn
from the descriptors' own covariance, scaled to ``--noise`` times the median distance between a
database descriptor and its nearest other one, so that copies are new views of the same place.
Queries are the real queries of every saved query folder (noisy copies are added when there
are fewer than ``--queries-num``); a database row is a positive of a query when its source
image is within 25 m of the query (the saved UTMs), as in ``progeo eval``.

Without ``--descriptors``, synthetic places: centres grouped in regions of
``--places-per-region`` (hard negatives for each other), random directions with a decaying
variance spectrum; the database holds ``--images-per-place`` noisy views of every place; each
query is a new view of a random place whose positives are the views of the same place. Exact
search gets an R@1 of about 90 %, like ProGEO on SF-XL.

Reported per kind: build seconds (training + adding), search seconds for all queries with all
threads, serialized index bytes (faiss.write_index into a byte counter) and RSS growth during
the build, R@1 (share of queries whose top-1 is a positive), that R@1 relative to exact flat
search, and top-1 agreement with exact search. ``flat-fp16`` scans every code per query
without BLAS; its search is timed on ``--slow-queries-num`` queries and scaled (marked ``*``).

    progeo eval --model demo_out/stage2-progeo/best_model --test-set demo_out/world-default-seed0/test \
        --queries queries queries_night queries_occlusion --save-descriptors /tmp/desc --device cpu
    .venv/bin/python benchmarks/bench_index.py --descriptors /tmp/desc/world-default-seed0__test  # 2.8 M x 512
    .venv/bin/python benchmarks/bench_index.py                        # synthetic places, 2.8 M x 512
    .venv/bin/python benchmarks/bench_index.py --database-num 200000   # quick
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import resource
import time

import faiss
import numpy as np

from progeo.eval.search import INDEX_KINDS, IndexConfig, apply_search_params, build_index, search


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def serialized_bytes(index: faiss.Index) -> int:
    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return total


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def spectrum(dim: int) -> np.ndarray:
    """Per-dimension scale with a decaying variance (like the PCA spectrum of real
    descriptors), normalized so that a standard normal vector times it has norm ~1."""
    scale = (1.0 + np.arange(dim) / 16.0) ** -0.5
    return (scale / np.sqrt(np.sum(scale**2))).astype(np.float32)


def make_centres(places_num: int, dim: int, spread: float, places_per_region: int, rng: np.random.Generator) -> np.ndarray:
    """Place centres in regions (neighbourhoods): a region direction plus ``spread`` times a
    place offset, so that the places of one region are hard negatives for each other."""
    regions = _normalized(rng.standard_normal((max(1, places_num // places_per_region), dim), dtype=np.float32) * spectrum(dim))
    offsets = rng.standard_normal((places_num, dim), dtype=np.float32) * (spectrum(dim) * np.float32(spread))
    return _normalized(regions[rng.integers(0, len(regions), places_num)] + offsets)


def views(centres: np.ndarray, places: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """New 'photos' of the given places: centre + noise, L2-normalized, float32."""
    scale = spectrum(centres.shape[1]) * np.float32(noise)
    return _normalized(centres[places] + rng.standard_normal((len(places), centres.shape[1]), dtype=np.float32) * scale)


def make_database(centres: np.ndarray, database_num: int, noise: float, rng: np.random.Generator, chunk: int = 262144):
    """float16 database + place label per row; row i shows place i % places_num."""
    database = np.empty((database_num, centres.shape[1]), dtype=np.float16)
    places = np.arange(database_num) % len(centres)
    for start in range(0, database_num, chunk):
        database[start : start + chunk] = views(centres, places[start : start + chunk], noise, rng)
    return database, places


def trained_data(folder: str, database_num: int, queries_num: int, dim: int, noise: float,
                 rng: np.random.Generator, chunk: int = 262144):
    """(database float16, positive(query_rows, database_rows) -> bool array, queries float32)
    from a saved test set; see the module docstring."""
    from pathlib import Path

    from scipy.spatial import cKDTree

    from progeo.eval.descriptors_io import load_descriptors

    root = Path(folder)
    if not (root / "database").is_dir():
        raise SystemExit(f"{root} has no database/ folder: give the test set's folder written by "
                         f"`progeo eval --model M --test-set DIR --queries all --save-descriptors OUT` (OUT/<set>)")
    saved_db = load_descriptors(root / "database")
    query_dirs = sorted(p for p in root.iterdir() if p.name.startswith("queries") and p.is_dir())
    if saved_db.utms is None or not query_dirs:
        raise SystemExit(f"{folder} needs database/ and queries*/ saved with UTMs (progeo eval --save-descriptors)")
    saved_q = [load_descriptors(p) for p in query_dirs]
    sources = _normalized(np.asarray(saved_db.descriptors, dtype=np.float32))
    real_q = _normalized(np.concatenate([np.asarray(q.descriptors, dtype=np.float32) for q in saved_q]))
    q_utms = np.concatenate([q.utms for q in saved_q])
    tree = cKDTree(saved_db.utms)
    positive = np.zeros((len(real_q), len(sources)), dtype=bool)
    for i, near in enumerate(tree.query_ball_point(q_utms, r=25.0)):
        positive[i, near] = True
    sims = sources @ sources.T
    np.fill_diagonal(sims, -1.0)
    nn_dist = float(np.median(np.sqrt(np.maximum(0.0, 2 - 2 * sims.max(1)))))
    # noise ~ N(0, C) with C the descriptors' covariance, scaled to noise * nn_dist in norm
    factor = np.linalg.cholesky(np.cov(sources.T) + 1e-6 * np.eye(sources.shape[1])).astype(np.float32)
    scale = np.float32(noise * nn_dist / np.sqrt(np.trace(np.cov(sources.T))))
    basis_rng = np.random.default_rng(rng.integers(1 << 31))

    def noisy(rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        jitter = (rng.standard_normal((len(rows), x.shape[1]), dtype=np.float32) @ factor.T) * scale
        return _normalized(x[rows] + jitter)

    basis, _ = np.linalg.qr(basis_rng.standard_normal((max(dim, sources.shape[1]), sources.shape[1])))
    basis = basis.astype(np.float32).T  # d x dim, orthonormal rows
    dim = max(dim, sources.shape[1])
    database = np.empty((database_num, dim), dtype=np.float16)
    db_source = np.arange(database_num) % len(sources)
    for start in range(0, database_num, chunk):
        rows = db_source[start : start + chunk]
        database[start : start + chunk] = noisy(rows, sources) @ basis
    q_source = np.concatenate([np.arange(len(real_q)), rng.integers(0, len(real_q), max(0, queries_num - len(real_q)))])
    q_source = q_source[:queries_num]
    queries = real_q[q_source]
    extra = np.arange(len(q_source)) >= len(real_q)
    queries[extra] = noisy(q_source[extra], real_q)
    queries = np.ascontiguousarray(queries @ basis)

    def is_positive(query_rows: np.ndarray, database_rows: np.ndarray) -> np.ndarray:
        return positive[q_source[query_rows], db_source[database_rows]]

    print(f"trained descriptors: {len(sources)} database x {saved_db.meta.dim}-d from {saved_db.meta.model}, "
          f"{len(real_q)} real queries ({', '.join(p.name for p in query_dirs)}), lifted to {dim}-d, "
          f"noise {noise} x median NN distance {nn_dist:.3f}")
    return database, is_positive, queries


def time_search(index, queries: np.ndarray, k: int, limit: int | None) -> tuple[float, np.ndarray, bool]:
    """Best of up to 3 runs (fewer when a run takes over 10 s): the machine may be shared."""
    subset = queries if limit is None or limit >= len(queries) else queries[:limit]
    best, spent, runs = float("inf"), 0.0, 0
    while runs < 3 and (runs == 0 or spent < 10.0):
        start = time.perf_counter()
        _, ids = search(index, subset, k)
        seconds = time.perf_counter() - start
        best, spent, runs = min(best, seconds), spent + seconds, runs + 1
    scaled = len(subset) < len(queries)
    if scaled:  # accuracy on the subset, time extrapolated linearly (every query scans all codes)
        best *= len(queries) / len(subset)
    return best, ids, scaled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-num", type=int, default=2_800_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries-num", type=int, default=1000)
    parser.add_argument("--images-per-place", type=int, default=10)
    parser.add_argument("--noise", type=float, help="synthetic: norm of the noise added to a unit place centre (0.9); "
                        "--descriptors: noise norm in median nearest-neighbour distances (0.5)")
    parser.add_argument("--place-spread", type=float, default=0.5, help="place offset from its region (smaller: harder)")
    parser.add_argument("--places-per-region", type=int, default=100)
    parser.add_argument("--descriptors", help="a test set's folder saved by progeo eval --save-descriptors "
                        "(database/ + queries*/): replicate a trained model's descriptors instead of synthetic places")
    parser.add_argument("--kinds", default=",".join(INDEX_KINDS), help="comma-separated index kinds")
    parser.add_argument("--slow-queries-num", type=int, default=100, help="queries timed for flat-fp16")
    parser.add_argument("--nlist", type=int, help="ivfpq cells (default: automatic)")
    parser.add_argument("--m", type=int, help="ivfpq bytes per vector (default: automatic)")
    parser.add_argument("--train-size", type=int, help="ivfpq training sample (default: automatic)")
    parser.add_argument("--no-rotate", action="store_true", help="ivfpq without the random rotation")
    parser.add_argument("--nprobes", default="8,16,32", help="ivfpq nprobe values to search with")
    parser.add_argument("--hnsw-m", type=int)
    parser.add_argument("--ef-construction", type=int)
    parser.add_argument("--ef-searches", default="64,128", help="hnsw efSearch values to search with")
    parser.add_argument("--threads", type=int, help="faiss threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    run_start = start = time.perf_counter()
    if args.descriptors:
        noise = 0.5 if args.noise is None else args.noise
        database, is_positive, queries = trained_data(args.descriptors, args.database_num, args.queries_num,
                                                      args.dim, noise, rng)
        args.dim = database.shape[1]
    else:
        places_num = max(1, args.database_num // args.images_per_place)
        centres = make_centres(places_num, args.dim, args.place_spread, args.places_per_region, rng)
        noise = 0.9 if args.noise is None else args.noise
        database, places = make_database(centres, args.database_num, noise, rng)
        query_places = rng.choice(min(len(centres), args.database_num), size=args.queries_num, replace=False)
        queries = views(centres, query_places, noise, rng)
        del centres

        def is_positive(query_rows: np.ndarray, database_rows: np.ndarray) -> np.ndarray:
            return places[database_rows] == query_places[query_rows]
    print(f"data: {args.database_num} x {args.dim} float16 database, {args.queries_num} queries "
          f"({time.perf_counter() - start:.0f} s to generate), faiss threads {faiss.omp_get_max_threads()}")

    overrides = {name: getattr(args, name) for name in ("nlist", "m", "train_size", "hnsw_m", "ef_construction")}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if args.no_rotate:
        overrides["rotate"] = False
    sweeps = {"ivfpq": ("nprobe", _ints(args.nprobes)), "hnsw": ("ef_search", _ints(args.ef_searches))}
    rows, exact_top1, exact_hits = [], None, None
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    kinds = ["flat"] + [k for k in kinds if k != "flat"]  # the reference comes first
    for kind in kinds:
        config = IndexConfig(kind=kind, **{n: v for n, v in overrides.items() if kind in ("ivfpq", "hnsw")})
        gc.collect()
        rss_before = rss_bytes()
        start = time.perf_counter()
        index = build_index(database, config, progress=False)
        build_s = time.perf_counter() - start
        rss_delta = rss_bytes() - rss_before
        size = serialized_bytes(index)
        name, values = sweeps.get(kind, (None, [None]))
        for value in values:
            label = kind
            if name is not None:
                apply_search_params(index, dataclasses.replace(config, **{name: value}))
                label = f"{kind} {name}={value}"
            limit = args.slow_queries_num if kind == "flat-fp16" else None
            search_s, ids, scaled = time_search(index, queries, 1, limit)
            top1 = ids[:, 0]
            hits = is_positive(np.arange(len(top1)), top1)
            if kind == "flat":
                exact_top1, exact_hits = top1, hits
            r1, exact_r1 = float(np.mean(hits)) * 100, float(np.mean(exact_hits[: len(top1)])) * 100
            agree = float(np.mean(top1 == exact_top1[: len(top1)])) * 100
            rows.append((label, build_s, search_s, scaled, size, rss_delta, r1, 100 * r1 / exact_r1, agree))
            print(f"  {label}: build {build_s:.0f} s, search {search_s:.2f} s", flush=True)
        del index

    flat_search, flat_size = rows[0][2], rows[0][4]
    header = (f"{'index':<22} {'build s':>8} {'search s':>9} {'speed-up':>8} {'index MB':>9} {'mem ratio':>9} "
              f"{'RSS+ MB':>8} {'R@1':>6} {'R@1 rel':>7} {'top1=exact':>10}")
    print(header)
    print("-" * len(header))
    for label, build_s, search_s, scaled, size, rss_delta, r1, rel, agree in rows:
        mark = "*" if scaled else " "
        print(f"{label:<22} {build_s:8.1f} {search_s:8.2f}{mark} {flat_search / search_s:7.1f}x {size / 2**20:9.0f} "
              f"{size / flat_size:9.3f} {rss_delta / 2**20:8.0f} {r1:6.1f} {rel:6.1f}% {agree:9.1f}%")
    if any(row[3] for row in rows):
        print("* timed on the first --slow-queries-num queries and scaled to all; R@1 on those queries "
              "(R@1 rel against exact search on the same queries)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS of the run: {peak:.1f} GiB; total {time.perf_counter() - run_start:.0f} s")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]

if __name__ == "__main__":
    main()
