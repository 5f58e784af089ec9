import logging

import numpy as np
import pytest

from progeo.data.test_sets import positives_within
from progeo.errors import ConfigError
from progeo.eval.recall import (
    RecallResult,
    compute_recalls,
    compute_recalls_from_positives,
    format_recall_table,
    prediction_distances,
    queries_without_positives,
)

# database: id 1 is exactly 25 m from query 0 (a 15-20-25 triangle): a tie that counts.
DATABASE_UTM = np.array([[0, 0], [15, 20], [100, 0], [0, 30], [1000, 1000]], dtype=float) + [550000, 4180000]
QUERIES_UTM = np.array([[0, 0], [100, 10], [500, 500], [0, 26]], dtype=float) + [550000, 4180000]
PREDICTIONS = np.array(
    [
        [2, 1, 4],  # first positive at rank 2 (the 25.0 m tie)
        [2, 0, 1],  # rank 1
        [4, 0, 2],  # this query has no positive at all
        [4, 2, 1],  # rank 3 (id 0 is 26 m away: not a positive)
    ]
)


def test_hand_computed_example(caplog):
    with caplog.at_level(logging.WARNING):
        result = compute_recalls(PREDICTIONS, QUERIES_UTM, DATABASE_UTM, recall_values=(1, 2, 3, 5))
    assert result.recalls == {1: 25.0, 2: 50.0, 3: 75.0}
    assert result.queries_num == 4 and result.queries_without_positives == 1
    assert "recall@5 dropped" in caplog.text
    assert result.as_dict() == {"R@1": 25.0, "R@2": 50.0, "R@3": 75.0, "queries_num": 4, "queries_without_positives": 1}


def test_distances_and_missing_predictions():
    predictions = np.array([[1, -1], [-1, -1]])
    dist = prediction_distances(predictions, QUERIES_UTM[:2], DATABASE_UTM)
    assert dist[0, 0] == pytest.approx(25.0) and np.isinf(dist[0, 1]) and np.isinf(dist[1]).all()
    result = compute_recalls(predictions, QUERIES_UTM[:2], DATABASE_UTM, recall_values=(1, 2))
    assert result.recalls == {1: 50.0, 2: 50.0}
    assert queries_without_positives(QUERIES_UTM, DATABASE_UTM, positive_dist=3.0) == 3  # only q0 (0 m) left


def test_positives_within_hand_example():
    positives = positives_within(QUERIES_UTM, DATABASE_UTM, 25.0)  # the data layer's KD-tree positives
    indptr, indices = positives.indptr, positives.indices
    assert indptr.tolist() == [0, 2, 3, 3, 5]
    assert indices.tolist() == [0, 1, 2, 1, 3]
    result = compute_recalls_from_positives(PREDICTIONS, indptr, indices, recall_values=(1, 2, 3))
    assert result.recalls == {1: 25.0, 2: 50.0, 3: 75.0} and result.queries_without_positives == 1


def test_csr_variant_agrees_with_utm_variant():
    rng = np.random.default_rng(0)
    database_utm = rng.uniform(0, 400, size=(500, 2))
    queries_utm = rng.uniform(-50, 450, size=(120, 2))
    predictions = rng.integers(0, 500, size=(120, 20))
    # brute-force positives, independent of positives_within
    dist = np.linalg.norm(queries_utm[:, None] - database_utm[None], axis=2)
    rows, cols = np.nonzero(dist <= 25.0)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=120))])
    by_utm = compute_recalls(predictions, queries_utm, database_utm)
    by_csr = compute_recalls_from_positives(predictions, indptr, cols)
    assert by_utm.recalls == pytest.approx(by_csr.recalls)
    assert by_utm.queries_without_positives == by_csr.queries_without_positives > 0
    assert 0 < by_utm.recalls[1] < by_utm.recalls[20] < 100
    tree = positives_within(queries_utm, database_utm, 25.0)
    tree_indptr, tree_indices = tree.indptr, tree.indices
    assert np.array_equal(tree_indptr, indptr) and np.array_equal(tree_indices, cols)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="Q x K integer"):
        compute_recalls(np.zeros((4, 3)), QUERIES_UTM, DATABASE_UTM)
    with pytest.raises(ConfigError, match="must match"):
        compute_recalls(PREDICTIONS[:2], QUERIES_UTM, DATABASE_UTM)
    with pytest.raises(ConfigError, match="out of range"):
        compute_recalls(PREDICTIONS + 10, QUERIES_UTM, DATABASE_UTM)
    with pytest.raises(ConfigError, match="east, north"):
        compute_recalls(PREDICTIONS, QUERIES_UTM[:, :1], DATABASE_UTM)
    with pytest.raises(ConfigError, match="positives_indptr"):
        compute_recalls_from_positives(PREDICTIONS, np.array([0, 1]), np.array([0]))
    with pytest.raises(ConfigError, match="positive integers"):
        compute_recalls(PREDICTIONS, QUERIES_UTM, DATABASE_UTM, recall_values=(0, 1))


def test_format_recall_table():
    table = format_recall_table(
        {
            "sf_xl/queries_v1": RecallResult({1: 93.04, 5: 96.7}, 1000, 3),
            "tokyo247/queries": RecallResult({1: 88.6, 5: 93.3, 10: 95.0}, 315),
        },
        title="ProGEO ViT-B/16",
    )
    lines = table.splitlines()
    assert lines[0] == "ProGEO ViT-B/16"
    assert lines[1].split() == ["queries", "no", "positive", "R@1", "R@5", "R@10"]
    assert lines[2].split() == ["sf_xl/queries_v1", "1000", "3", "93.0", "96.7", "-"]
    assert lines[3].split() == ["tokyo247/queries", "315", "0", "88.6", "93.3", "95.0"]
