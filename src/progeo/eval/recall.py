"""Recall@N, the visual geo-localization benchmark protocol, vectorized.

A query is correct at N when any of its top-N predictions lies within ``positive_dist``
(25 m) of it (UTM, Euclidean; a prediction at exactly 25 m counts). Recall@N is the share of
*all* queries correct at N, in percent: queries without any database image within 25 m
count in the denominator (they can never be correct), as in the benchmark.

Everything is array arithmetic over the Q x K prediction matrix (no Python loop per query):
per-prediction hit flags, a cumulative "any" along K, then the mean over queries.
Prediction ids of ``-1`` (faiss's "no result") count as misses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from progeo.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_RECALL_VALUES = (1, 5, 10, 20)
POSITIVE_DIST_M = 25.0


@dataclass(frozen=True)
class RecallResult:
    """``recalls[N]`` = recall@N in percent over ``queries_num`` queries."""

    recalls: dict[int, float]
    queries_num: int
    queries_without_positives: int = 0

    def as_dict(self) -> dict:
        """JSON-ready: ``{"R@1": ..., "queries_num": ..., ...}``."""
        out: dict = {f"R@{n}": value for n, value in self.recalls.items()}
        out["queries_num"] = self.queries_num
        out["queries_without_positives"] = self.queries_without_positives
        return out


def _check_predictions(predictions: np.ndarray) -> np.ndarray:
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or not np.issubdtype(predictions.dtype, np.integer):
        raise ConfigError(f"predictions must be a Q x K integer array, got shape {predictions.shape} {predictions.dtype}")
    return predictions.astype(np.int64, copy=False)


def _check_utm(utm: np.ndarray, name: str) -> np.ndarray:
    utm = np.asarray(utm, dtype=np.float64)
    if utm.ndim != 2 or utm.shape[1] != 2:
        raise ConfigError(f"{name} must be an N x 2 array of (east, north) metres, got shape {utm.shape}")
    return utm


def clip_recall_values(recall_values: Sequence[int], k: int) -> tuple[int, ...]:
    """Sorted unique recall values <= ``k``; larger ones are dropped with a warning."""
    values = sorted(set(int(n) for n in recall_values))
    if not values or values[0] < 1:
        raise ConfigError(f"recall values {list(recall_values)} must be positive integers, e.g. 1 5 10 20")
    kept = tuple(n for n in values if n <= k)
    dropped = [n for n in values if n > k]
    if dropped:
        logger.warning("recall@%s dropped: only %d predictions per query", ",".join(map(str, dropped)), k)
    return kept


def prediction_distances(predictions: np.ndarray, queries_utm: np.ndarray, database_utm: np.ndarray) -> np.ndarray:
    """Q x K distances in metres from each query to each of its predictions (inf for id -1)."""
    predictions = _check_predictions(predictions)
    queries_utm = _check_utm(queries_utm, "queries_utm")
    database_utm = _check_utm(database_utm, "database_utm")
    if len(predictions) != len(queries_utm):
        raise ConfigError(f"{len(predictions)} prediction rows for {len(queries_utm)} queries: they must match")
    if predictions.size and predictions.max() >= len(database_utm):
        raise ConfigError(f"prediction id {predictions.max()} out of range for a database of {len(database_utm)} images")
    valid = predictions >= 0
    predicted = database_utm[np.where(valid, predictions, 0)]  # Q x K x 2
    dist = np.linalg.norm(predicted - queries_utm[:, None, :], axis=2)
    dist[~valid] = np.inf
    return dist


def _recalls_from_hits(hits: np.ndarray, recall_values: Sequence[int]) -> dict[int, float]:
    """``hits``: Q x K booleans; recall@N = % of rows with a hit among the first N columns."""
    values = clip_recall_values(recall_values, hits.shape[1])
    if not len(hits):
        return {n: 0.0 for n in values}
    correct_at = np.logical_or.accumulate(hits, axis=1)
    return {n: float(correct_at[:, n - 1].mean() * 100.0) for n in values}


def queries_without_positives(queries_utm: np.ndarray, database_utm: np.ndarray, positive_dist: float = POSITIVE_DIST_M) -> int:
    """Number of queries with no database image within ``positive_dist`` (KD-tree, O(Q log D))."""
    queries_utm = _check_utm(queries_utm, "queries_utm")
    database_utm = _check_utm(database_utm, "database_utm")
    if not len(database_utm):
        return len(queries_utm)
    bound = np.nextafter(positive_dist, np.inf)  # cKDTree's bound is strict; 25.0 m must count
    nearest, _ = cKDTree(database_utm).query(queries_utm, k=1, distance_upper_bound=bound)
    return int(np.sum(~(nearest <= positive_dist)))


def compute_recalls(
    predictions: np.ndarray,
    queries_utm: np.ndarray,
    database_utm: np.ndarray,
    recall_values: Sequence[int] = DEFAULT_RECALL_VALUES,
    positive_dist: float = POSITIVE_DIST_M,
) -> RecallResult:
    """Recall@N from Q x K predicted database ids and the UTM (east, north) of both sides."""
    hits = prediction_distances(predictions, queries_utm, database_utm) <= positive_dist
    return RecallResult(
        recalls=_recalls_from_hits(hits, recall_values),
        queries_num=len(hits),
        queries_without_positives=queries_without_positives(queries_utm, database_utm, positive_dist),
    )


def compute_recalls_from_positives(
    predictions: np.ndarray,
    positives_indptr: np.ndarray,
    positives_indices: np.ndarray,
    recall_values: Sequence[int] = DEFAULT_RECALL_VALUES,
) -> RecallResult:
    """Recall@N when each query's positives are given explicitly in CSR form.

    The positives of query ``q`` are ``positives_indices[positives_indptr[q]:positives_indptr[q+1]]``,
    e.g. from :func:`progeo.data.test_sets.positives_within` (or ``TestSet.positives_csr``).
    Membership is tested for all (query, prediction) pairs at once with ``np.isin`` on
    ``query * D + database_id`` keys.
    """
    predictions = _check_predictions(predictions)
    indptr = np.asarray(positives_indptr, dtype=np.int64)
    indices = np.asarray(positives_indices, dtype=np.int64)
    queries_num = len(predictions)
    if indptr.shape != (queries_num + 1,) or indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        raise ConfigError(
            f"positives_indptr must be non-decreasing, of length queries_num + 1 = {queries_num + 1}, "
            f"from 0 to len(positives_indices) = {len(indices)}"
        )
    span = int(max(predictions.max(initial=-1), indices.max(initial=-1))) + 1
    counts = np.diff(indptr)
    positive_keys = np.repeat(np.arange(queries_num, dtype=np.int64), counts) * span + indices
    prediction_keys = np.arange(queries_num, dtype=np.int64)[:, None] * span + predictions
    hits = np.isin(prediction_keys, positive_keys) & (predictions >= 0)
    return RecallResult(
        recalls=_recalls_from_hits(hits, recall_values),
        queries_num=queries_num,
        queries_without_positives=int(np.sum(counts == 0)),
    )


def format_recall_table(rows: Mapping[str, RecallResult] | Sequence[tuple[str, RecallResult]], title: str = "") -> str:
    """Plain-text table, one row per dataset / query folder / method, one column per R@N."""
    items = list(rows.items()) if isinstance(rows, Mapping) else list(rows)
    values = sorted({n for _, result in items for n in result.recalls})
    header = ["", "queries", "no positive"] + [f"R@{n}" for n in values]
    body = [
        [name, str(r.queries_num), str(r.queries_without_positives)]
        + [f"{r.recalls[n]:.1f}" if n in r.recalls else "-" for n in values]
        for name, r in items
    ]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    lines = [title] if title else []
    for line in [header] + body:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
