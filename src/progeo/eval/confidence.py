"""How far to trust a localized position: agreement of its best matches, and how to measure that.

Confidence (0..1)
    A similarity-weighted vote of the ``CONFIDENCE_DEPTH`` (10) best matches -- always these,
    whatever number of matches is shown. Match i weighs ``w_i = exp((score_i - best score) / T)``
    (T = ``TEMPERATURE`` = 0.05 cosine units; the best weighs 1); ``place`` is the weight share of
    the matches within ``positive_dist`` (25 m) of the predicted position, ``city`` the share
    within ``CITY_DIST_M`` (25 km)::

        confidence = (place + city) / 2

    Near 1: the best matches agree on the place, or the best stands far above the others; about
    0.1: ten equally similar matches in ten different cities (a likely wrong answer). With no
    runner-up to compare with (an index of one image) it is 0. Unlike the similarity gap it
    replaced, it is a share, and it does not change with ``top_k``. The counts behind it are
    reported too: ``agreeing`` / ``agreeing_city``, the runner-ups (ranks 2-10) within 25 m /
    25 km of the prediction.

Measured with ``benchmarks/bench_confidence.py`` (the README has the table): when answers are
ranked by confidence, the area under the accuracy-vs-coverage curve (:func:`accuracy_coverage_auc`)
is higher than with the similarity gap it replaced (best score minus the best score of a match
farther than 25 m from the best, within the top-k shown), at the place and at the city level.
"""

from __future__ import annotations

import numpy as np

from progeo.errors import ConfigError

CONFIDENCE_DEPTH = 10  # matches (the best included) that the confidence looks at, whatever top_k
CITY_DIST_M = 25_000.0  # "the same city" (the Im2GPS city scale; the synthetic world's cities lie >= 270 km apart)
TEMPERATURE = 0.05  # cosine units; chosen on the benchmark, where 0.03-0.1 ranked answers within ~3 AUC points


def agreement(distances_m: np.ndarray, valid: np.ndarray, positive_dist: float,
              depth: int = CONFIDENCE_DEPTH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: runner-ups (ranks 2..``depth`` that exist), how many of them lie within
    ``positive_dist`` and within :data:`CITY_DIST_M` of the prediction (column 0).

    ``distances_m``: Q x K distances of each match to the predicted position; ``valid``: Q x K,
    False where the search returned no match.
    """
    d, v = np.asarray(distances_m, dtype=np.float64)[:, 1:depth], np.asarray(valid, dtype=bool)[:, 1:depth]
    return v.sum(axis=1), (v & (d <= positive_dist)).sum(axis=1), (v & (d <= CITY_DIST_M)).sum(axis=1)


def soft_confidence(scores: np.ndarray, distances_m: np.ndarray, valid: np.ndarray, positive_dist: float,
                    depth: int = CONFIDENCE_DEPTH, temperature: float = TEMPERATURE) -> np.ndarray:
    """The confidence of the module docstring, per query, from Q x K scores (best first),
    distances of the matches to the prediction (column 0) and their validity."""
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature} must be positive")
    s = np.asarray(scores, dtype=np.float64)[:, :depth]
    d, v = np.asarray(distances_m, dtype=np.float64)[:, :depth], np.asarray(valid, dtype=bool)[:, :depth]
    weights = np.where(v, np.exp(np.minimum(s - s[:, :1], 0.0) / temperature), 0.0)
    total = weights.sum(axis=1)
    place = (weights * (d <= positive_dist)).sum(axis=1) / total
    city = (weights * (d <= CITY_DIST_M)).sum(axis=1) / total
    return np.where(v[:, 1:].any(axis=1), (place + city) / 2, 0.0)


def accuracy_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (i / n) and accuracy of the i most confident answers, i = 1..n.

    Ties are broken at random in expectation: within a group of equal confidences the expected
    number of right answers grows linearly, so the curve does not depend on the input order.
    """
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ConfigError(f"confidence {confidence.shape} and correct {correct.shape} must be two vectors of one length")
    n = len(confidence)
    if not n:
        raise ConfigError("no answer to rank: the accuracy-coverage curve needs at least one")
    order = np.argsort(-confidence, kind="stable")
    conf, right = confidence[order], correct[order]
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rates = np.add.reduceat(right, starts) / sizes
    before = np.r_[0.0, np.cumsum(rates * sizes)[:-1]]  # right answers in the groups before each group
    group = np.repeat(np.arange(len(starts)), sizes)
    position = np.arange(n) - starts[group] + 1  # 1-based position inside its group
    expected_right = before[group] + rates[group] * position
    counts = np.arange(1, n + 1)
    return counts / n, expected_right / counts


def accuracy_coverage_auc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the accuracy-vs-coverage curve, in %: the overall accuracy for a confidence that
    ranks at random, 100 when every right answer ranks above every wrong one."""
    return float(100.0 * accuracy_coverage(confidence, correct)[1].mean())
