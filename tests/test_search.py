import dataclasses
import json
import logging

import faiss
import numpy as np
import pytest

from progeo.errors import ConfigError, DatasetError
from progeo.eval.search import (
    IndexConfig,
    build_index,
    config_path,
    faiss_threads,
    load_index,
    save_index,
    search,
)

APPROXIMATE = {
    "flat-fp16": IndexConfig(kind="flat-fp16"),
    "ivfpq": IndexConfig(kind="ivfpq", nlist=16, m=16, nprobe=4, train_size=2000),
    "ivfpq-unrotated": IndexConfig(kind="ivfpq", nlist=16, m=16, nprobe=4, train_size=2000, rotate=False),
    "hnsw": IndexConfig(kind="hnsw", hnsw_m=16, ef_construction=40, ef_search=64),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """OpenMP threads spin-wait: on a busy shared CI machine 2 threads can be 10x slower than 1."""
    with faiss_threads(1):
        yield


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """2,000 x 64 database in 100 clusters, 200 queries near random database vectors."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 64))
    database = _unit(centres[np.arange(2000) % 100] + 0.4 * rng.standard_normal((2000, 64)))
    queries = _unit(database[rng.choice(2000, 200, replace=False)] + 0.05 * rng.standard_normal((200, 64)))
    exact = np.argsort(-(queries @ database.T), axis=1)[:, :10]
    return database, queries, exact


@pytest.fixture(scope="module")
def built(clustered):
    """One index per kind, built once (PQ training is the slow part)."""
    configs = {"flat": IndexConfig(), **APPROXIMATE}
    return {kind: (build_index(clustered[0], config, chunk_size=512, progress=False), config) for kind, config in configs.items()}


def test_flat_is_exact_with_cosine_scores(clustered):
    database, queries, exact = clustered
    index = build_index(database * 3.0, IndexConfig(), chunk_size=300, progress=False)  # rows are normalized
    scores, ids = search(index, queries, 10, batch_size=64)
    expected = np.take_along_axis(queries @ database.T, exact, axis=1)
    # the same neighbours; two of them tie to 1e-7 here, so their order is compared by similarity
    np.testing.assert_allclose(np.take_along_axis(queries @ database.T, ids, axis=1), expected, atol=1e-6)
    assert np.mean(ids == exact) > 0.99
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind", sorted(APPROXIMATE))
def test_approximate_kinds_find_the_neighbours(clustered, built, kind):
    database, queries, exact = clustered
    index, _ = built[kind]
    scores, ids = search(index, queries, 10)
    top1_found = np.mean([exact[q, 0] in ids[q] for q in range(len(queries))])
    overlap = np.mean([len(set(ids[q]) & set(exact[q])) / 10 for q in range(len(queries))])
    assert top1_found >= 0.95 and overlap >= 0.8, (top1_found, overlap)
    true_scores = np.sum(queries[:, None, :] * database[ids], axis=2)
    np.testing.assert_allclose(scores, true_scores, atol=0.1)  # similarities, whatever the metric


def test_float16_memmap_input_matches_float32(tmp_path, clustered):
    database, queries, _ = clustered
    stored = np.lib.format.open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float16, shape=database.shape)
    stored[:] = database
    stored.flush()
    half = np.load(tmp_path / "d.npy", mmap_mode="r")
    for kind in ("flat", "flat-fp16"):
        _, ids16 = search(build_index(half, IndexConfig(kind=kind), chunk_size=700, progress=False), queries, 5)
        _, ids32 = search(build_index(database.astype(np.float16).astype(np.float32), IndexConfig(kind=kind), progress=False), queries, 5)
        assert np.array_equal(ids16, ids32)


@pytest.mark.parametrize("kind", ["flat", "flat-fp16", "ivfpq", "ivfpq-unrotated", "hnsw"])
def test_save_load_round_trip_mmap(tmp_path, clustered, built, kind):
    _, queries, _ = clustered
    index, config = built[kind]
    path = tmp_path / f"{kind}.index"
    save_index(index, path, config)
    assert json.loads(open(config_path(path)).read())["ntotal"] == 2000
    loaded, loaded_config = load_index(path, mmap=True)
    assert loaded_config == dataclasses.replace(config, metric="cosine") and loaded.ntotal == 2000
    before = search(index, queries, 5)
    after = search(loaded, queries, 5)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    if kind.startswith("ivfpq"):
        assert faiss.extract_index_ivf(loaded).nprobe == config.nprobe
        assert isinstance(loaded, faiss.IndexPreTransform) == config.rotate
    if kind == "hnsw":
        assert faiss.downcast_index(loaded).hnsw.efSearch == config.ef_search
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_mmap_fallback_is_logged(tmp_path, clustered, monkeypatch, caplog):
    database, queries, _ = clustered
    save_index(build_index(database, progress=False), tmp_path / "x.index", IndexConfig())
    real_read = faiss.read_index

    def read_without_mmap(path, flags=0):
        if flags:
            raise RuntimeError("Error: mmap not supported here\nmore detail")
        return real_read(path)

    monkeypatch.setattr(faiss, "read_index", read_without_mmap)
    with caplog.at_level(logging.DEBUG, logger="progeo.eval.search"):  # debug: no second stderr line for users
        index, _ = load_index(tmp_path / "x.index")
    assert "cannot memory-map" in caplog.text and index.ntotal == 2000


def test_auto_parameters():
    config = IndexConfig(kind="ivfpq").resolved(2_800_000, 512)
    assert config.nlist & (config.nlist - 1) == 0 and 2048 <= config.nlist <= 16384
    assert 512 % config.m == 0 and config.train_size <= 2_800_000
    assert IndexConfig().resolved(10, 8) == IndexConfig()


def test_bad_inputs(tmp_path, clustered):
    database, queries, _ = clustered
    with pytest.raises(ConfigError, match="unknown: choose one of flat, flat-fp16, ivfpq, hnsw"):
        IndexConfig(kind="lsh")
    with pytest.raises(ConfigError, match="must divide"):
        build_index(database, IndexConfig(kind="ivfpq", nlist=16, m=7), progress=False)
    with pytest.raises(ConfigError, match="at least nlist"):
        build_index(database[:10], IndexConfig(kind="ivfpq", nlist=16), progress=False)
    index = build_index(database, progress=False)
    with pytest.raises(ConfigError, match="dimension 32 but the index has 64"):
        search(index, queries[:, :32], 5)
    with pytest.raises(ConfigError, match="N x dim float"):
        build_index(np.zeros((5, 4), dtype=np.int64), progress=False)
    with pytest.raises(DatasetError, match="does not exist"):
        load_index(tmp_path / "missing.index")
    save_index(index, tmp_path / "a.index", IndexConfig())
    save_index(build_index(database[:100], progress=False), tmp_path / "b.index", IndexConfig())
    (tmp_path / "b.index").replace(tmp_path / "a.index")  # index file without its own config
    with pytest.raises(DatasetError, match="do not belong together"):
        load_index(tmp_path / "a.index")


def test_thread_count_is_restored(clustered):
    before = faiss.omp_get_max_threads()
    with faiss_threads(before + 1):
        assert faiss.omp_get_max_threads() == before + 1
    assert faiss.omp_get_max_threads() == before
    database, queries, exact = clustered
    _, ids = search(build_index(database, threads=1, progress=False), queries, 10, threads=1)
    assert np.array_equal(ids, exact)
