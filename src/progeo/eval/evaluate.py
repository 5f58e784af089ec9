"""Recall@N of a descriptor model on VG test sets: describe, index, search, count (SPEC 1.1).

:func:`evaluate` is the one evaluation path: ``progeo eval``, the training loop's validation,
the demo and the benchmarks all call it. For a model it does:

1. descriptors of the database, in batches, decoded by parallel workers
   (:func:`progeo.data.images.iter_image_batches`: reduced-size JPEG decoding, the
   ``on_bad_image`` policy) and described by ``model.describe`` -- once per test set;
2. a faiss index of them (:func:`progeo.eval.search.build_index`, any :class:`IndexConfig` kind), searched
   with the model's metric (:func:`model_metric`: cosine, or Euclidean distance for the
   ViT heads that do not normalize, as the ProGEO authors evaluate) unless the index config
   names one;
3. for every query folder: query descriptors in batches, one batched search, recall@N against
   the positives within ``positive_dist`` (:func:`progeo.data.test_sets.positives_within`,
   :func:`progeo.eval.recall.compute_recalls_from_positives`: no Python loop per query).

Bad images with ``on_bad_image="skip"``: a skipped database image is out of the index and of
the positives; a skipped query keeps its row (ids ``-1``) and counts as a miss.

Descriptors may be saved (``save_dir``: float16, memory-mapped, :mod:`progeo.eval.descriptors_io`)
and evaluated later without the model (:func:`evaluate` given their folder). Saving does not change the run's
own results: it searches the float32 descriptors it computed; a later evaluation of the saved
float16 copy may differ by that rounding only. The metric and the skipped images are recorded in
the saved metadata so that the later evaluation searches and counts the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from progeo.data.test_sets import TestSet
from progeo.errors import ConfigError, DatasetError
from progeo.eval.descriptors import Described, describe, describe_files, load_described
from progeo.eval.recall import (DEFAULT_RECALL_VALUES, POSITIVE_DIST_M, RecallResult, clip_recall_values,
                                compute_recalls_from_positives, prediction_distances)
from progeo.eval.search import DEFAULT_METRIC, IndexConfig, build_index

log = logging.getLogger(__name__)

DATABASE_SPLIT = "database"


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate; the defaults are the benchmark's (25 m, R@1/5/10/20, exact search)."""

    positive_dist: float = POSITIVE_DIST_M
    recall_values: tuple[int, ...] = DEFAULT_RECALL_VALUES
    batch_size: int = 64
    query_batch_size: int | None = None  # None: batch_size; 1: the one-query-at-a-time baseline
    num_workers: int = 0  # decoding processes (0: in the main process)
    device: str = "cpu"
    image_size: tuple[int, int] | None = None  # None: the model's (see native_size)
    resize_mode: str = "resize"  # the VG test transform: stretch to image_size
    # True: images at their native size (the authors' eval.py without --resize_test_imgs); None:
    # as the model's preprocessing says (test_resize); ignored when image_size is given
    native_size: bool | None = None
    on_bad_image: str = "fail"
    index: IndexConfig = field(default_factory=IndexConfig)
    k: int | None = None  # predictions kept per query (None: the largest recall value)
    amp: bool = True
    channels_last: bool | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.positive_dist > 0:
            raise ConfigError(f"positive_dist={self.positive_dist} must be > 0 metres (the benchmark uses 25)")
        clip_recall_values(self.recall_values, max(self.recall_values, default=1))  # positive integers
        if self.batch_size < 1 or (self.query_batch_size is not None and self.query_batch_size < 1):
            raise ConfigError(f"batch sizes must be >= 1 (got {self.batch_size}, {self.query_batch_size})")


@dataclass
class FolderResult:
    """Recalls of one query folder, with what grids and reports need."""

    dataset: str
    queries_folder: str
    recall: RecallResult
    predictions: np.ndarray  # Q x K ids into database_paths (-1: none, e.g. a skipped query)
    scores: np.ndarray  # Q x K, higher is better: cosine similarities, or minus Euclidean distances (l2)
    database: Described
    queries: Described
    seconds: dict[str, float]
    image_size: tuple[int, int] | None = None
    metric: str = "cosine"

    @property
    def database_paths(self) -> list[str]:
        return [self.database.paths[int(i)] for i in self.database.rows]

    def distances_m(self) -> np.ndarray:
        """Q x K metres from each query to its predictions (inf where none)."""
        return prediction_distances(self.predictions, self.queries.utms, self.database.utms[self.database.rows])

    def as_dict(self) -> dict:
        return {
            "model": self.queries.model, "dataset": self.dataset, "queries_folder": self.queries_folder,
            "image_size": list(self.image_size) if self.image_size else "native", "metric": self.metric,
            "database_num": len(self.database.rows), "database_skipped": len(self.database.skipped),
            "queries_num": self.recall.queries_num, "queries_skipped": len(self.queries.skipped),
            "queries_without_positives": self.recall.queries_without_positives,
            "recalls": {f"R@{n}": v for n, v in self.recall.recalls.items()},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "skipped_paths": (self.database.skipped_paths + self.queries.skipped_paths)[:1000],
        }


def model_metric(model) -> str:
    """How ``model``'s descriptors are compared: its ``metric`` attribute (a GeoLocalizer's comes
    from its saved config), cosine for a model that does not say."""
    return getattr(model, "metric", None) or DEFAULT_METRIC


def _with_metric(cfg: EvalConfig, metric: str | None) -> EvalConfig:
    """``cfg`` searching with ``metric`` unless its index config names one."""
    return dataclasses.replace(cfg, index=cfg.index.with_default_metric(metric))


def eval_image_size(model, cfg: EvalConfig) -> tuple[int, int] | None:
    """The size test images are resized to, or None for their native size (ResNet models only)."""
    if cfg.image_size:
        return tuple(cfg.image_size)
    pre = getattr(model, "preprocess_config", None)
    native = cfg.native_size if cfg.native_size is not None else (pre is not None and not pre.test_resize)
    if not native:
        return tuple(model.image_size)
    if getattr(model, "family", "resnet") != "resnet":
        raise ConfigError(f"a {model.config.arch} ViT model takes only {model.image_size[0]}x{model.image_size[1]} "
                          "images, not native-size ones; drop --native-size")
    return None


def saved_folder_names(roots: Sequence[str | os.PathLike]) -> dict[str, str]:
    """The sub-folder of a descriptors folder (``save_dir``) that holds each test set's (keys: ``str(root)``)."""
    from progeo.eval.results import dataset_names

    return {r: n.replace("/", "__") for r, n in dataset_names(roots).items()}


def saved_descriptor_folders(root: str | os.PathLike, test_sets: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """The saved-descriptors folders (each with ``database/``) in ``root``: ``root`` itself, or its
    sub-folders, one per test set; ``test_sets`` picks those of these test set folders."""
    root = Path(root)
    if (root / DATABASE_SPLIT).is_dir():
        return [root]
    folders = sorted(p for p in root.iterdir() if (p / DATABASE_SPLIT).is_dir()) if root.is_dir() else []
    if not folders:
        raise ConfigError(f"--descriptors {root}: no saved descriptors (a database/ folder) there; "
                          "save them with `progeo eval --model M --test-set DIR --save-descriptors DIR`")
    if test_sets:
        folders = [root / n for n in saved_folder_names(test_sets).values()]
        missing = [f.name for f in folders if not (f / DATABASE_SPLIT).is_dir()]
        if missing:
            raise ConfigError(f"--descriptors {root} has no saved descriptors for {', '.join(missing)}: "
                              f"save them with `progeo eval --model M --test-set ... --save-descriptors {root}`")
    return folders


def evaluate(source, test_set=None, queries: str | Sequence[str | None] | None = None, cfg: EvalConfig = EvalConfig(),
             *, model_name: str = "", save_dir: str | os.PathLike | None = None, images=None) -> list[FolderResult]:
    """Recall@N of ``source`` on a test set: one :class:`FolderResult` per query folder.

    ``source``: a model (a :class:`~progeo.models.GeoLocalizer`, or anything with ``describe``,
    ``descriptor_dim`` and ``image_size``), or a folder of descriptors saved by an earlier
    evaluation (``save_dir``; no model and no image needed; searched with the metric saved with
    them unless ``cfg.index`` names one).
    ``test_set``: a :class:`~progeo.data.test_sets.TestSet` or a test set folder (``database/`` and
    ``queries*/``); with saved descriptors it is optional and picks its own out of a folder of several.
    ``queries``: query folder names, or ``"all"`` for every ``queries*`` folder; None: the
    TestSet's own, else the default folder (``queries``, or the only one).
    ``save_dir``: keep the descriptors there (``database/`` and one folder per query folder); the
    run itself searches the float32 descriptors it computed, whether it saves them or not.
    ``images``: the set's images already decoded (uint8, database then queries, at the model's
    size), as a training run that validates every epoch keeps them.

    The database is described and indexed once for all query folders; the model is left as it
    was (mode, device, memory layout).
    """
    if queries is None or isinstance(queries, str):
        queries = [queries or getattr(test_set, "queries_folder", None)]
    if isinstance(source, (str, os.PathLike)):
        roots = [] if test_set is None else [test_set.root if isinstance(test_set, TestSet) else test_set]
        return [r for folder in saved_descriptor_folders(source, roots) for r in _evaluate_saved(folder, queries, cfg)]
    if test_set is None:
        raise ConfigError("evaluate(model, ...) needs the test set: a TestSet or a folder with database/ and queries*/")
    return _evaluate_model(source, _test_sets(test_set, queries, cfg.positive_dist), cfg, model_name, save_dir, images)


def _test_sets(test_set, queries: Sequence[str | None], positive_dist: float) -> list:
    """One TestSet per query folder name (``"all"``: every ``queries*`` folder), reusing ``test_set`` if it is one."""
    from progeo.data.test_sets import list_query_folders

    root = test_set.root if isinstance(test_set, TestSet) else test_set
    names: list[str | None] = []
    for name in queries or (None,):
        found = list_query_folders(root) if name == "all" else [name]
        if name == "all" and not found:
            raise DatasetError(f"no query folder (queries*) in {root}: --queries all found nothing")
        names.extend(n for n in found if n is None or n not in names)
    return [test_set if isinstance(test_set, TestSet) and name == test_set.queries_folder
            and test_set.positive_dist_threshold == positive_dist else TestSet(root, name, positive_dist)
            for name in names]


def _evaluate_model(model, test_sets: list, cfg: EvalConfig, model_name: str, save_dir, images) -> list[FolderResult]:
    from progeo.eval.descriptors_io import DescriptorsMeta

    cfg = _with_metric(cfg, model_metric(model))
    first = test_sets[0]
    size = eval_image_size(model, cfg)
    if images is not None and (len(test_sets) != 1 or len(images) != len(first)):
        raise ConfigError(f"images: {len(images)} decoded images for {len(first)} database + query images "
                          f"of {len(test_sets)} query folder(s); give the images of one query folder's test set")

    def described(paths, utms, split, batch_size, offset):
        if images is not None:
            start = time.perf_counter()
            d = describe(model, images[offset : offset + len(paths)], batch_size=batch_size, device=cfg.device,
                         amp=cfg.amp, channels_last=cfg.channels_last)
            return Described(d, np.arange(len(paths)), paths, utms, seconds=time.perf_counter() - start)
        meta = DescriptorsMeta(model=model_name, image_size=size, dataset=os.path.abspath(first.root), split=split,
                               metric=cfg.index.search_metric)
        return describe_files(model, paths, batch_size=batch_size, device=cfg.device, num_workers=cfg.num_workers,
                              on_bad_image=cfg.on_bad_image, image_size=size, native=size is None, resize_mode=cfg.resize_mode,
                              amp=cfg.amp, channels_last=cfg.channels_last, progress=cfg.progress,
                              desc=f"describing {first.root.name}/{split}", utms=utms, meta=meta,
                              save_dir=None if save_dir is None else Path(save_dir) / split, keep_in_memory=True)

    database = described(first.database_paths, first.database_utms, DATABASE_SPLIT, cfg.batch_size, 0)
    folders = ((t.queries_folder, described(t.queries_paths, t.queries_utms, t.queries_folder,
                                            cfg.query_batch_size or cfg.batch_size, first.database_num),
                None if len(database.skipped) else t.positives) for t in test_sets)
    return _search_and_count(database, folders, cfg, os.path.abspath(first.root), size, images is None)


def _evaluate_saved(folder: Path, queries: Sequence[str | None], cfg: EvalConfig) -> list[FolderResult]:
    from progeo.data.test_sets import list_query_folders, select_query_folder
    from progeo.eval.descriptors_io import load_descriptors

    database = load_described(folder / DATABASE_SPLIT)
    meta = load_descriptors(folder / DATABASE_SPLIT).meta
    cfg = _with_metric(cfg, meta.metric or DEFAULT_METRIC)
    names = [n for q in queries for n in (list_query_folders(folder) if q == "all" else [select_query_folder(folder, q)])]

    def folders():
        for name in dict.fromkeys(names):
            found = load_described(folder / name)
            if found.model != database.model:
                raise DatasetError(f"{folder / name} was described by {found.model!r} but its database by "
                                   f"{database.model!r}; save both with the same model")
            yield name, found, None

    return _search_and_count(database, folders(), cfg, meta.dataset, meta.image_size and tuple(meta.image_size))


def _search_and_count(database: Described, folders, cfg: EvalConfig, dataset: str, image_size,
                      progress: bool = True) -> list[FolderResult]:
    """Index the database, then for each ``(name, queries, positives)`` of ``folders`` search every query
    at once (in ``query_batch_size`` blocks) and count recall@N; ``positives``: precomputed CSR
    positives over the readable database, or None to compute them here."""
    from progeo.data.test_sets import positives_within
    from progeo.eval.search import search

    start = time.perf_counter()
    index = build_index(database.descriptors, cfg.index, progress=cfg.progress and progress)
    index_seconds, k = time.perf_counter() - start, max(1, min(cfg.k or max(cfg.recall_values), len(database.rows)))
    results = []
    for name, queries, positives in folders:
        start = time.perf_counter()
        scores = np.full((len(queries.paths), k), -np.inf, dtype=np.float32)
        predictions = np.full((len(queries.paths), k), -1, dtype=np.int64)
        if len(queries.rows):
            scores[queries.rows], predictions[queries.rows] = search(
                index, queries.descriptors, k, batch_size=cfg.query_batch_size or 4096, metric=cfg.index.search_metric)
        seconds = {"describe_database": database.seconds, "describe_queries": queries.seconds,
                   "search": time.perf_counter() - start, "index": index_seconds}
        if positives is None:
            positives = positives_within(queries.utms, database.utms[database.rows], cfg.positive_dist)
        recall = compute_recalls_from_positives(predictions, positives.indptr, positives.indices, cfg.recall_values)
        results.append(FolderResult(dataset, name, recall, predictions, scores, database, queries, seconds,
                                    image_size, cfg.index.search_metric))
    return results
