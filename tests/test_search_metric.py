"""The search metric: l2 (raw descriptors by Euclidean distance, as the ProGEO authors evaluate)
and cosine, for every index kind, against hand-written numpy references on descriptors whose
norms vary 0.2-5x; the metric saved with indexes and models."""

import dataclasses
import json

import numpy as np
import pytest

from progeo.errors import ConfigError
from progeo.eval.search import IndexConfig, build_index, config_path, faiss_threads, load_index, save_index, search

KINDS = {
    "flat": IndexConfig(),
    "flat-fp16": IndexConfig(kind="flat-fp16"),
    "ivfpq": IndexConfig(kind="ivfpq", nlist=16, m=16, nprobe=16, train_size=1500),
    "ivfpq-unrotated": IndexConfig(kind="ivfpq", nlist=16, m=16, nprobe=16, train_size=1500, rotate=False),
    # HNSW needs a denser build on these norms: the many short vectors near the origin trap greedy search
    "hnsw": IndexConfig(kind="hnsw", hnsw_m=32, ef_construction=200, ef_search=128),
}
RECALL_AT = (1, 5, 10)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with faiss_threads(1):
        yield


@pytest.fixture(scope="module")
def varied_norms():
    """300 places of 5 descriptors with almost the same direction and norms from 0.2x to 5x, and one
    query near each of 300 database descriptors (``sources``): Euclidean distance tells the 5 apart,
    the direction barely does."""
    rng = np.random.default_rng(1)
    places, per_place, dim = 300, 5, 64
    centres = rng.standard_normal((places, dim))
    directions = np.repeat(centres / np.linalg.norm(centres, axis=1, keepdims=True), per_place, axis=0)
    directions += 0.005 * rng.standard_normal(directions.shape)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = np.tile(np.geomspace(0.2, 5.0, per_place), places) * np.exp(rng.uniform(-0.1, 0.1, places * per_place))
    database = (directions * norms[:, None]).astype(np.float32)
    sources = rng.choice(len(database), 300, replace=False)
    queries = (database[sources] + 0.03 * norms[sources, None] * rng.standard_normal((300, dim))).astype(np.float32)
    return database, queries, sources


def _euclidean_reference(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and distances by brute force, in float64."""
    diff = queries.astype(np.float64)[:, None, :] - database.astype(np.float64)[None, :, :]
    dist = np.sqrt((diff**2).sum(axis=2))
    ids = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(dist, ids, axis=1)


def _cosine_reference(database: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    unit = lambda x: x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)  # noqa: E731
    return np.argsort(-(unit(queries) @ unit(database).T), axis=1, kind="stable")[:, :k]


def _recalls(ids: np.ndarray, sources: np.ndarray) -> dict[int, float]:
    return {n: float(np.mean([s in row[:n] for s, row in zip(sources, ids)])) for n in RECALL_AT}


@pytest.fixture(scope="module")
def l2_indexes(varied_norms):
    database = varied_norms[0]
    return {kind: build_index(database, dataclasses.replace(c, metric="l2"), chunk_size=512, progress=False)
            for kind, c in KINDS.items()}


def test_l2_flat_is_the_numpy_euclidean_ranking_and_differs_from_cosine(varied_norms, l2_indexes):
    database, queries, sources = varied_norms
    ref_ids, ref_dist = _euclidean_reference(database, queries, 10)
    scores, ids = search(l2_indexes["flat"], queries, 10, batch_size=64, metric="l2")
    assert np.array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, -ref_dist, rtol=1e-4, atol=1e-4)  # minus the distance, best first
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores <= 0)
    l2, cosine = _recalls(ref_ids, sources), _recalls(_cosine_reference(database, queries, 10), sources)
    assert l2[1] == 1.0 and cosine[1] < 0.8  # the data where the metric matters (R@1 100 % vs ~61 %)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_l2_recall_equals_the_numpy_euclidean_reference_for_every_kind(varied_norms, l2_indexes, kind):
    database, queries, sources = varied_norms
    ref_ids, _ = _euclidean_reference(database, queries, 10)
    scores, ids = search(l2_indexes[kind], queries, 10, metric="l2")
    assert _recalls(ids, sources) == _recalls(ref_ids, sources)
    assert np.mean(ids[:, 0] == ref_ids[:, 0]) == 1.0
    true_dist = np.linalg.norm(queries[:, None, :] - database[ids], axis=2)
    assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores <= 0)
    if kind.startswith("ivfpq"):  # distances to the product-quantized vectors: approximate
        assert np.corrcoef(-scores.ravel(), true_dist.ravel())[0, 1] > 0.9
    else:
        np.testing.assert_allclose(-scores, true_dist, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cosine_ignores_the_norms_for_every_kind(varied_norms, kind):
    database, queries, _ = varied_norms
    config = dataclasses.replace(KINDS[kind], metric="cosine")
    unit = database / np.linalg.norm(database, axis=1, keepdims=True)
    scores, ids = search(build_index(database, config, progress=False), queries * 7.0, 10, metric="cosine")
    _, ids_unit = search(build_index(unit, config, progress=False), queries, 10, metric="cosine")
    assert np.mean(ids == ids_unit) > 0.99  # the same search as on unit vectors (float rounding aside)
    if kind == "flat":
        assert np.array_equal(ids, _cosine_reference(database, queries, 10))
        cos = np.sum((queries / np.linalg.norm(queries, axis=1, keepdims=True))[:, None, :] * unit[ids], axis=2)
        np.testing.assert_allclose(scores, cos, atol=1e-5)
    assert np.all(np.abs(scores) <= 1.0 + 1e-5)


def test_unset_metric_is_cosine_and_a_wrong_metric_is_refused(varied_norms, l2_indexes):
    database, queries, _ = varied_norms
    assert IndexConfig().search_metric == "cosine" and IndexConfig(metric="l2").search_metric == "l2"
    assert IndexConfig().with_default_metric("l2").metric == "l2"
    assert IndexConfig(metric="cosine").with_default_metric("l2").metric == "cosine"  # an explicit one wins
    with pytest.raises(ConfigError, match="metric 'dot' is unknown: choose one of cosine, l2"):
        IndexConfig(metric="dot")
    with pytest.raises(ConfigError, match="built for the l2 metric, not cosine"):
        search(l2_indexes["flat"], queries, 5, metric="cosine")
    with pytest.raises(ConfigError, match="built for the cosine metric, not l2"):
        search(build_index(database, progress=False), queries, 5, metric="l2")


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_metric_is_saved_with_the_index(tmp_path, varied_norms, l2_indexes, kind):
    _, queries, _ = varied_norms
    config = dataclasses.replace(KINDS[kind], metric="l2")
    save_index(l2_indexes[kind], tmp_path / "x.index", config)
    assert json.loads(open(config_path(tmp_path / "x.index")).read())["config"]["metric"] == "l2"
    loaded, loaded_config = load_index(tmp_path / "x.index")
    assert loaded_config.metric == "l2"
    assert np.array_equal(search(loaded, queries, 5, metric="l2")[1], search(l2_indexes[kind], queries, 5, metric="l2")[1])


def test_index_saved_before_metrics_were_recorded_is_cosine(tmp_path, varied_norms):
    database, queries, _ = varied_norms
    save_index(build_index(database, progress=False), tmp_path / "old.index", IndexConfig())
    meta = json.loads(open(config_path(tmp_path / "old.index")).read())
    assert meta["config"].pop("metric") == "cosine"  # now recorded explicitly even when left unset
    open(config_path(tmp_path / "old.index"), "w").write(json.dumps(meta))
    loaded, config = load_index(tmp_path / "old.index")
    assert config.search_metric == "cosine"
    assert np.array_equal(search(loaded, queries, 5)[1], _cosine_reference(database, queries, 5))
