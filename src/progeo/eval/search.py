"""Nearest-neighbour search over millions of descriptors with faiss.

Metrics (:class:`IndexConfig` ``metric``; a model's own is ``model.config.metric``):

``"cosine"``
    vectors are L2-normalized (in float32, one chunk at a time) before they are added or
    searched; scores are cosine similarities in [-1, 1].
``"l2"``
    raw vectors ranked by Euclidean distance, as the ProGEO authors evaluate (faiss
    ``IndexFlatL2`` on the ViT models' not-normalized embeddings); scores are *minus* the
    Euclidean distance (<= 0).

Either way :func:`search` returns scores where higher is better, best first, and every index
kind supports both metrics.

Index kinds (:class:`IndexConfig` ``kind``):

``"flat"`` (default)
    exact search (``IndexFlatIP``, ``IndexFlatL2`` for l2); 4 bytes x dim per vector.
``"flat-fp16"``
    exact scan over float16 codes (``IndexScalarQuantizer`` ``QT_fp16``); half the memory,
    no BLAS, so slower than ``flat`` for large query batches.
``"ivfpq"``
    ``IndexIVFPQ``: a coarse k-means quantizer with ``nlist`` cells, each vector stored as
    ``m`` bytes (``nbits`` = 8) of product-quantized residual; ``nprobe`` cells are scanned per
    query. With ``rotate`` (default) a random orthogonal rotation is applied first
    (``IndexPreTransform`` + ``RandomRotationMatrix``): it spreads the variance evenly over the
    PQ sub-vectors, which matters because descriptors concentrate it in a few directions
    (measured: R@1 relative to exact 97.0 % -> 99.1 % with m = 128). Trained on a random
    sample of ``train_size`` vectors. The choice for millions of vectors.
``"hnsw"``
    ``IndexHNSWFlat``: graph search (``hnsw_m`` links per node, ``ef_construction`` at build,
    ``ef_search`` at query time); fast and accurate but keeps the float32 vectors plus the graph.
    With l2 on descriptors whose norms vary a lot, short vectors crowd near the origin and
    greedy search can stall there: raise ``ef_construction`` (tests/test_search_metric.py: 200).

Inputs may be float16/float32 arrays or memory maps of any size: they are added in chunks,
and flat kinds are written straight into a preallocated faiss buffer, so peak memory is the
index plus one chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator

import faiss
import numpy as np
from tqdm import tqdm

from progeo.errors import ConfigError, DatasetError, reading, short_reason
from progeo.io import atomic_path, write_json_atomic

logger = logging.getLogger(__name__)

INDEX_KINDS = ("flat", "flat-fp16", "ivfpq", "hnsw")
METRICS = ("cosine", "l2")
DEFAULT_METRIC = "cosine"  # of an IndexConfig without one (and of indexes saved before metrics were recorded)
# Training cost, measured with benchmarks/bench_index.py: 10 coarse k-means iterations instead
# of faiss's 25, and PQ codebooks trained on 128 instead of 256 points per centroid, build
# about twice as fast at the same R@1 (within 0.3 %).
_COARSE_KMEANS_ITERATIONS = 10
_PQ_KMEANS_ITERATIONS = 25
_PQ_POINTS_PER_CENTROID = 128
_CONFIG_SUFFIX = ".json"


@dataclass(frozen=True)
class IndexConfig:
    """How to index descriptors. ``None`` values are chosen from the database size at build.

    The ivfpq defaults were chosen with ``benchmarks/bench_index.py`` (2.8 M x 512, 2 CPU
    cores): nlist = 4096, m = 128, nprobe = 16 search 1,000 queries 55-64x faster than exact
    float32 search with the same R@1 (synthetic and trained-model descriptors; README table),
    in 7 % of its memory (serialized), and build in 4-7 min.
    m = 64 lost ~6 % of R@1; nlist = 2048 was 4x slower to search for ~3 % less R@1;
    nlist = 8192 (4 sqrt(N)) doubles the build time (coarse assignment) on a CPU.
    HNSW is fast and accurate but keeps the float32 vectors (more memory than flat) and takes
    long to build: use it for up to a few hundred thousand vectors.
    """

    kind: str = "flat"
    metric: str | None = None  # "cosine" | "l2"; None: the model's where one is known, else cosine
    # ivfpq
    nlist: int | None = None  # coarse cells; auto: 2 * sqrt(N) rounded to a power of two, in [16, 65536]
    m: int | None = None  # PQ bytes per vector; auto: dim // 4 (128 for 512-d: 1/16 of float32)
    nbits: int = 8
    nprobe: int = 16  # cells scanned per query
    train_size: int | None = None  # auto: min(N, max(40 * nlist, 65536))
    rotate: bool = True  # random rotation before PQ
    # hnsw
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind {self.kind!r} is unknown: choose one of {', '.join(INDEX_KINDS)}")
        if self.metric is not None and self.metric not in METRICS:
            raise ConfigError(f"search metric {self.metric!r} is unknown: choose one of {', '.join(METRICS)}")
        for name in ("nlist", "m", "train_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"index {name}={value} must be positive (or left unset for automatic)")
        if min(self.nbits, self.nprobe, self.hnsw_m, self.ef_construction, self.ef_search) < 1:
            raise ConfigError("index nbits, nprobe, hnsw_m, ef_construction and ef_search must be positive")

    @property
    def search_metric(self) -> str:
        """The metric this config searches with (``metric``, or cosine when unset)."""
        return self.metric or DEFAULT_METRIC

    def with_default_metric(self, metric: str | None) -> "IndexConfig":
        """A copy that uses ``metric`` (e.g. the model's) unless this config names one already."""
        return self if self.metric or not metric else dataclasses.replace(self, metric=metric)

    def resolved(self, database_num: int, dim: int) -> "IndexConfig":
        """A copy with every automatic value fixed for ``database_num`` vectors of ``dim``."""
        if self.kind != "ivfpq":
            return self
        nlist = self.nlist or int(min(65536, max(16, 2 ** round(math.log2(2 * math.sqrt(max(database_num, 1)))))))
        m = self.m or max(1, dim // 4)
        if dim % m:
            raise ConfigError(f"index m={m} must divide the descriptor dimension {dim}: try {dim // 4} or {dim // 8}")
        train_size = min(database_num, self.train_size or max(40 * nlist, 65536))
        if database_num < nlist:
            raise ConfigError(f"ivfpq needs at least nlist={nlist} database vectors, got {database_num}: use kind 'flat'")
        return dataclasses.replace(self, nlist=nlist, m=m, train_size=train_size)


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` OpenMP threads in faiss (``None``: leave as is)."""
    if threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _as_float32(block: np.ndarray, metric: str) -> np.ndarray:
    """A contiguous float32 block, L2-normalized for cosine (the caller's array is never modified)."""
    out = np.ascontiguousarray(block, dtype=np.float32)
    if metric == "cosine":
        if out is block:
            out = out.copy()
        faiss.normalize_L2(out)
    return out


def _check_descriptors(descriptors: np.ndarray, name: str) -> None:
    if descriptors.ndim != 2 or not np.issubdtype(descriptors.dtype, np.floating):
        raise ConfigError(f"{name} must be an N x dim float array, got shape {descriptors.shape} {descriptors.dtype}")


def _empty_index(config: IndexConfig, dim: int) -> faiss.Index:
    # cosine: inner product of unit vectors; l2: Euclidean distance of the raw vectors
    faiss_metric = faiss.METRIC_INNER_PRODUCT if config.search_metric == "cosine" else faiss.METRIC_L2
    if config.kind == "flat":
        return faiss.IndexFlatIP(dim) if faiss_metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(dim)
    if config.kind == "flat-fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss_metric)
    if config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss_metric)
        index.hnsw.efConstruction = config.ef_construction
        return index
    # Both metrics use L2 here: on unit vectors (cosine) it ranks like inner product, and
    # residual PQ is most accurate with L2.
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, config.nlist, config.m, config.nbits)
    index.cp.seed, index.cp.niter = config.seed, _COARSE_KMEANS_ITERATIONS
    index.pq.cp.seed, index.pq.cp.niter = config.seed, _PQ_KMEANS_ITERATIONS
    index.pq.cp.max_points_per_centroid = _PQ_POINTS_PER_CENTROID
    if not config.rotate:
        return index
    rotation = faiss.RandomRotationMatrix(dim, dim)
    rotation.init(config.seed + 1)
    return faiss.IndexPreTransform(rotation, index)


def _train(index: faiss.Index, descriptors: np.ndarray, config: IndexConfig) -> None:
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(len(descriptors), size=config.train_size, replace=False))
    logger.info("training %s on %d of %d vectors", config.kind, len(sample), len(descriptors))
    index.train(_as_float32(descriptors[sample], config.search_metric))


def build_index(
    descriptors: np.ndarray,
    config: IndexConfig = IndexConfig(),
    chunk_size: int = 65536,
    threads: int | None = None,
    progress: bool = True,
) -> faiss.Index:
    """Index ``descriptors`` (N x dim, float16 or float32, possibly memory-mapped) for
    ``config.metric`` (unset: cosine).

    Row ``i`` of ``descriptors`` gets id ``i``. Search-time parameters (``nprobe``,
    ``ef_search``) are applied to the returned index. No vector, or too few for faiss to train
    on, is a :class:`DatasetError` / :class:`ConfigError`.
    """
    _check_descriptors(descriptors, "descriptors")
    database_num, dim = descriptors.shape
    if not database_num:
        raise DatasetError("no readable database image: nothing to search (check the database folder)")
    config = config.resolved(database_num, dim)
    try:
        index = _fill(descriptors, config, chunk_size, threads, progress)
    except RuntimeError as exc:  # faiss's own training errors (too few vectors for ivfpq)
        raise ConfigError(f"cannot build the {config.kind} index of {database_num} database vectors "
                          f"({str(exc).splitlines()[-1].strip()}); use --index flat or hnsw for a small database") from exc
    apply_search_params(index, config)
    return index


def _fill(descriptors: np.ndarray, config: IndexConfig, chunk_size: int, threads: int | None, progress: bool):
    database_num, dim = descriptors.shape
    with faiss_threads(threads):
        index = _empty_index(config, dim)
        if not index.is_trained:
            _train(index, descriptors, config)
        chunks = range(0, database_num, chunk_size)
        bar = tqdm(chunks, desc=f"indexing ({config.kind})", unit="chunk", disable=not progress)
        if isinstance(index, faiss.IndexFlatCodes):
            # write codes into one preallocated buffer: no vector-doubling copies of a huge array
            index.codes.resize(database_num * index.code_size)
            codes = faiss.rev_swig_ptr(index.codes.data(), database_num * index.code_size)
            codes = codes.reshape(database_num, index.code_size)
            for start in bar:
                block = descriptors[start : start + chunk_size]
                codes[start : start + len(block)] = index.sa_encode(_as_float32(block, config.search_metric))
            index.ntotal = database_num
        else:
            for start in bar:
                index.add(_as_float32(descriptors[start : start + chunk_size], config.search_metric))
    return index


def apply_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Set ``nprobe`` (ivfpq) or ``efSearch`` (hnsw) from ``config`` on ``index``."""
    if config.kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = config.nprobe
    elif config.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = config.ef_search


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    batch_size: int = 4096,
    threads: int | None = None,
    metric: str = DEFAULT_METRIC,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database ids for each query: ``(scores Q x k float32, ids Q x k int64)``.

    ``metric`` must be the one the index was built for (``IndexConfig.search_metric``).
    Scores are higher-is-better, best first: cosine similarities (cosine) or minus the
    Euclidean distance (l2); where fewer than ``k`` results exist the ids are ``-1`` and the
    scores ``-inf``.
    """
    _check_descriptors(queries, "queries")
    if queries.shape[1] != index.d:
        raise ConfigError(f"queries have dimension {queries.shape[1]} but the index has {index.d}: use the same model")
    if k < 1:
        raise ConfigError(f"k={k} must be at least 1")
    _check_metric(index, metric)
    scores = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    with faiss_threads(threads):
        for start in range(0, len(queries), batch_size):
            block = _as_float32(queries[start : start + batch_size], metric)
            dist, found = index.search(block, k)
            if metric == "l2":  # faiss gives squared distances (rounding can make them slightly negative)
                dist = -np.sqrt(np.maximum(dist, 0.0))
            elif index.metric_type == faiss.METRIC_L2:  # unit vectors: |a - b|^2 = 2 - 2 cos
                dist = 1.0 - dist / 2.0
            dist[found < 0] = -np.inf
            scores[start : start + len(block)] = dist
            ids[start : start + len(block)] = found
    return scores, ids


def _check_metric(index: faiss.Index, metric: str) -> None:
    """Refuse a metric the index cannot have been built for (an inner-product index searched
    with l2, or a flat / HNSW L2 index with cosine; IVF-PQ uses L2 for both)."""
    if metric not in METRICS:
        raise ConfigError(f"search metric {metric!r} is unknown: choose one of {', '.join(METRICS)}")
    inner = index.metric_type == faiss.METRIC_INNER_PRODUCT
    ivf = faiss.try_extract_index_ivf(index) is not None
    if (metric == "l2" and inner) or (metric == "cosine" and not inner and not ivf):
        built = "cosine" if inner else "l2"
        raise ConfigError(f"this index was built for the {built} metric, not {metric}: search it with "
                          f"metric={built!r} or rebuild it with metric={metric!r}")


def config_path(index_path: str | os.PathLike) -> str:
    """The JSON file saved beside an index file."""
    return os.fspath(index_path) + _CONFIG_SUFFIX


def save_index(index: faiss.Index, path: str | os.PathLike, config: IndexConfig) -> None:
    """Write ``index`` atomically to ``path`` and its config (metric included) to ``path.json``."""
    config = dataclasses.replace(config.resolved(int(index.ntotal), int(index.d)), metric=config.search_metric)
    with atomic_path(path) as tmp:
        faiss.write_index(index, os.fspath(tmp))
    meta = {"config": dataclasses.asdict(config), "ntotal": int(index.ntotal), "dim": int(index.d), "faiss_version": faiss.__version__}
    write_json_atomic(config_path(path), meta)


def load_index(path: str | os.PathLike, mmap: bool = True) -> tuple[faiss.Index, IndexConfig]:
    """Read an index saved by :func:`save_index`; with ``mmap`` its codes stay on disk
    (``IO_FLAG_MMAP_IFC``), falling back to reading into memory where faiss cannot map it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"index file {path} does not exist: build it first with `progeo index build`")
    fix = "rebuild the index with `progeo index build`"
    with reading(config_path(path), "index config", fix):
        with open(config_path(path), encoding="utf-8") as f:
            meta = json.load(f)
        config = IndexConfig(**meta["config"])
    index = None
    if mmap:
        # IO_FLAG_MMAP_IFC maps the codes of flat, scalar-quantizer, HNSW storage and IVF lists
        # alike (faiss >= 1.8); plain IO_FLAG_MMAP maps IVF lists only. Measured: ~0 RSS at load.
        try:
            index = faiss.read_index(path, getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP))
        except RuntimeError as exc:
            logger.debug("cannot memory-map %s (%s); reading it into memory", path, short_reason(exc))
    if index is None:
        with reading(path, "faiss index", fix):
            index = faiss.read_index(path)
    if index.ntotal != meta.get("ntotal") or index.d != meta.get("dim"):
        raise DatasetError(
            f"index {path} has {index.ntotal} x {index.d} vectors but its config says "
            f"{meta.get('ntotal')} x {meta.get('dim')}: the files do not belong together, rebuild the index"
        )
    apply_search_params(index, config)
    return index, config
