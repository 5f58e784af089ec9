"""Recall@N of a descriptor model on VG test sets: describe, index, search, count (SPEC 1.1).

The composition behind ``progeo eval``, the training loop's validation and the demo:

1. descriptors of the database, in batches, decoded by parallel workers
   (:func:`progeo.data.images.iter_image_batches`: reduced-size JPEG decoding, the
   ``on_bad_image`` policy) and described by ``model.describe`` -- once per test set;
2. a faiss index of them (:mod:`progeo.eval.search`, any :class:`IndexConfig` kind), searched
   with the model's metric (:func:`model_metric`: cosine, or Euclidean distance for the
   ViT heads that do not normalize, as the ProGEO authors evaluate) unless the index config
   names one;
3. for every query folder: query descriptors in batches, one batched search, recall@N against
   the positives within ``positive_dist`` (:func:`progeo.data.test_sets.positives_within`,
   :func:`progeo.eval.recall.compute_recalls_from_positives`: no Python loop per query).

Bad images with ``on_bad_image="skip"``: a skipped database image is out of the index and of
the positives; a skipped query keeps its row (ids ``-1``) and counts as a miss.

Descriptors may be saved (``save_dir``: float16, memory-mapped, :mod:`progeo.eval.descriptors_io`)
and evaluated later without the model (:func:`evaluate_saved`). Saving does not change the run's
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
import torch

from progeo.errors import ConfigError, DatasetError
from progeo.eval.descriptors import Described, describe_files, describe_images, describe_paths, load_described  # noqa: F401
from progeo.eval.recall import (DEFAULT_RECALL_VALUES, POSITIVE_DIST_M, RecallResult, clip_recall_values,
                                compute_recalls_from_positives, prediction_distances)
from progeo.eval.search import DEFAULT_METRIC, IndexConfig

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


def build_database_index(descriptors: np.ndarray, config: IndexConfig, progress: bool = True):
    """The faiss index of the readable database images (ids = rows of ``descriptors``); faiss's
    own training errors (too few vectors for ``ivfpq``) become a :class:`ConfigError`."""
    from progeo.eval.search import build_index

    if not len(descriptors):
        raise DatasetError("no readable database image: nothing to search (check the database folder)")
    try:
        return build_index(descriptors, config, progress=progress)
    except RuntimeError as exc:
        raise ConfigError(f"cannot build the {config.kind} index of {len(descriptors)} database vectors "
                          f"({str(exc).splitlines()[-1].strip()}); use --index flat or hnsw for a small database") from exc


def evaluate_queries(index, database: Described, queries: Described, cfg: EvalConfig, *, dataset: str = "",
                     queries_folder: str = "", positives=None) -> FolderResult:
    """Search every query at once (in ``query_batch_size`` blocks) and count recall@N.

    ``positives``: precomputed CSR positives over the readable database (else computed here).
    """
    from progeo.data.test_sets import positives_within
    from progeo.eval.search import search

    k = max(1, min(cfg.k or max(cfg.recall_values), len(database.rows)))
    start = time.perf_counter()
    scores = np.full((len(queries.paths), k), -np.inf, dtype=np.float32)
    predictions = np.full((len(queries.paths), k), -1, dtype=np.int64)
    if len(queries.rows):
        scores[queries.rows], predictions[queries.rows] = search(
            index, queries.descriptors, k, batch_size=cfg.query_batch_size or 4096, metric=cfg.index.search_metric)
    search_seconds = time.perf_counter() - start
    if positives is None:
        positives = positives_within(queries.utms, database.utms[database.rows], cfg.positive_dist)
    recall = compute_recalls_from_positives(predictions, positives.indptr, positives.indices, cfg.recall_values)
    seconds = {"describe_database": database.seconds, "describe_queries": queries.seconds, "search": search_seconds}
    return FolderResult(dataset, queries_folder, recall, predictions, scores, database, queries, seconds,
                        metric=cfg.index.search_metric)


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


def load_model_or_backbone(spec: str, device: str | torch.device = "cpu", image_size=None, weights=None):
    """A saved model (folder or ``.safetensors`` file), or for a backbone name (``RN50:openai``,
    ``ViT-B/16:openai``, ``tiny-vit``) a new, not trained model: the zero-shot baseline.

    ``image_size`` (height, width): the input size; a saved ViT keeps its own. ``weights``: a
    local CLIP weights file for a backbone name (offline use).
    """
    from progeo.models import build_model, load_model

    looks_like_path = spec.endswith(".safetensors") or (os.sep in spec and ":" not in spec)
    if Path(spec).exists() or looks_like_path:
        model = load_model(spec, device)
        if image_size and tuple(image_size) != tuple(model.image_size) and getattr(model, "family", "resnet") != "resnet":
            raise ConfigError(f"{spec} is a ViT model of {model.image_size[0]}x{model.image_size[1]} px: it cannot "
                              f"take {image_size[0]}x{image_size[1]} images; drop --resize")
        return model
    return build_model(spec, image_size=tuple(image_size) if image_size else None, weights=weights, device=device).eval()


def open_test_sets(root: str | os.PathLike, queries_folders: Sequence[str | None] = (None,),
                   positive_dist: float = POSITIVE_DIST_M) -> list:
    """One :class:`~progeo.data.test_sets.TestSet` per query folder of ``root``; ``None`` picks the
    default folder, ``"all"`` every ``queries*`` folder."""
    from progeo.data.test_sets import TestSet, list_query_folders

    names: list[str | None] = []
    for name in queries_folders or (None,):
        found = list_query_folders(root) if name == "all" else [name]
        if name == "all" and not found:
            raise DatasetError(f"no query folder (queries*) in {root}: --queries all found nothing")
        names.extend(n for n in found if n is None or n not in names)
    return [TestSet(root, name, positive_dist) for name in names]


def evaluate_test_set(model, test_sets: Sequence, cfg: EvalConfig = EvalConfig(), *, model_name: str = "",
                      save_dir: str | os.PathLike | None = None) -> list[FolderResult]:
    """Evaluate ``model`` on each of ``test_sets`` (query folders of one test set, see
    :func:`open_test_sets`): the database is described and indexed once. ``save_dir``: keep the
    descriptors there (``database/`` and one folder per query folder); the run itself searches
    the float32 descriptors it computed, whether it saves them or not."""
    from progeo.eval.descriptors_io import DescriptorsMeta

    cfg = _with_metric(cfg, model_metric(model))
    first = test_sets[0]
    if any(t.root != first.root for t in test_sets):
        raise ConfigError("evaluate_test_set: every test set must share one database (one root folder)")
    size = eval_image_size(model, cfg)
    was_training = getattr(model, "training", False)

    def describe(paths, utms, split, batch_size):
        meta = DescriptorsMeta(model=model_name, image_size=size, dataset=os.path.abspath(first.root), split=split,
                               metric=cfg.index.search_metric)
        return describe_files(model, paths, batch_size=batch_size, device=cfg.device, num_workers=cfg.num_workers,
                              on_bad_image=cfg.on_bad_image, image_size=size, native=size is None, resize_mode=cfg.resize_mode,
                              amp=cfg.amp, channels_last=cfg.channels_last, progress=cfg.progress,
                              desc=f"describing {first.root.name}/{split}", utms=utms, meta=meta,
                              save_dir=None if save_dir is None else Path(save_dir) / split, keep_in_memory=True)

    try:
        database = describe(first.database_paths, first.database_utms, DATABASE_SPLIT, cfg.batch_size)
        start = time.perf_counter()
        index = build_database_index(database.descriptors, cfg.index, cfg.progress)
        index_seconds = time.perf_counter() - start
        results = []
        for test_set in test_sets:
            queries = describe(test_set.queries_paths, test_set.queries_utms, test_set.queries_folder,
                               cfg.query_batch_size or cfg.batch_size)
            positives = None if len(database.skipped) else test_set.positives
            result = evaluate_queries(index, database, queries, cfg, dataset=os.path.abspath(test_set.root),
                                      queries_folder=test_set.queries_folder, positives=positives)
            result.seconds["index"], result.image_size = index_seconds, size
            results.append(result)
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    return results


def evaluate_saved(folder: str | os.PathLike, queries_folders: Sequence[str | None] = (None,),
                   cfg: EvalConfig = EvalConfig()) -> list[FolderResult]:
    """Evaluate descriptors saved by :func:`evaluate_test_set` (no model, no images needed);
    ``queries_folders`` as in :func:`open_test_sets`; the metric is the one saved with them
    (cosine for descriptors saved before it was recorded) unless ``cfg.index`` names one."""
    from progeo.data.test_sets import list_query_folders, select_query_folder
    from progeo.eval.descriptors_io import load_descriptors

    folder = Path(folder)
    meta = load_descriptors(folder / DATABASE_SPLIT).meta
    cfg = _with_metric(cfg, meta.metric or DEFAULT_METRIC)
    database = load_described(folder / DATABASE_SPLIT)
    start = time.perf_counter()
    index = build_database_index(database.descriptors, cfg.index, cfg.progress)
    index_seconds = time.perf_counter() - start
    names = [n for q in (queries_folders or (None,))
             for n in (list_query_folders(folder) if q == "all" else [select_query_folder(folder, q)])]
    results = []
    for name in dict.fromkeys(names):
        queries = load_described(folder / name)
        if queries.model != database.model:
            raise DatasetError(f"{folder / name} was described by {queries.model!r} but its database by "
                               f"{database.model!r}; save both with the same model")
        result = evaluate_queries(index, database, queries, cfg, dataset=meta.dataset, queries_folder=name)
        result.seconds["index"], result.image_size = index_seconds, meta.image_size and tuple(meta.image_size)
        results.append(result)
    return results


def evaluate(model, test_set, *, batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
             recall_values: Sequence[int] = DEFAULT_RECALL_VALUES, amp: bool = True,
             channels_last: bool | None = None, progress: bool = True,
             images: torch.Tensor | None = None, **options) -> RecallResult:
    """Recall@N (percent) of ``model`` on ``test_set`` (a :class:`progeo.data.test_sets.TestSet`).

    ``images``: the set's images already decoded (uint8, database then queries, at the model's
    size), e.g. kept in memory by a training run that validates every epoch. ``options``: more
    :class:`EvalConfig` fields (``on_bad_image``, ``index``, ``query_batch_size``, ``image_size``...).
    """
    cfg = EvalConfig(batch_size=batch_size, device=str(device), num_workers=num_workers,
                     recall_values=tuple(recall_values), amp=amp, channels_last=channels_last, progress=progress,
                     positive_dist=test_set.positive_dist_threshold, **options)
    cfg = _with_metric(cfg, model_metric(model))
    if images is None:
        return evaluate_test_set(model, [test_set], cfg)[0].recall
    was_training = getattr(model, "training", False)
    descs = describe_images(model, images, batch_size=batch_size, device=device, amp=amp, channels_last=channels_last)
    if hasattr(model, "train"):
        model.train(was_training)
    n = test_set.database_num
    database = Described(descs[:n], np.arange(n), test_set.database_paths, test_set.database_utms)
    queries = Described(descs[n:], np.arange(len(descs) - n), test_set.queries_paths, test_set.queries_utms)
    index = build_database_index(database.descriptors, cfg.index, progress=False)
    return evaluate_queries(index, database, queries, cfg, positives=test_set.positives).recall
