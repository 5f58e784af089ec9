"""The evaluation pipeline on the tiny synthetic world: batched = one-by-one, the database described
once for several query folders, bad-image policies, saved descriptors, preloaded images."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from progeo.data.images import iter_image_batches
from progeo.data.test_sets import TestSet
from progeo.errors import ConfigError, DatasetError, ImageDecodeError
from progeo.eval.descriptors import describe_files
from progeo.eval.evaluate import EvalConfig, evaluate
from progeo.eval.recall import compute_recalls
from progeo.eval.search import IndexConfig

QUIET = dict(progress=False, device="cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI machine is shared: one torch thread avoids spin-waiting slowdowns (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    from progeo.models import build_model

    torch.manual_seed(0)
    return build_model("tiny-vit").eval()


class Counting:
    """Wraps a model and counts the images it describes."""

    def __init__(self, model):
        self.model, self.described = model, 0
        self.image_size, self.descriptor_dim, self.metric = model.image_size, model.descriptor_dim, model.metric

    def describe(self, images, **kw):
        self.described += len(images)
        return self.model.describe(images, **kw)


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.fixture
def broken_test_set(tiny_world, tmp_path):
    """A copy of the test set (folders walked, no paths files) with one truncated database image
    and one truncated query."""
    root = tmp_path / "test"
    for folder in ("database", "queries"):
        shutil.copytree(tiny_world / "test" / folder, root / folder)
    bad_db = sorted((root / "database").iterdir())[5]
    bad_query = sorted((root / "queries").iterdir())[2]
    _truncate(bad_db)
    _truncate(bad_query)
    return root, bad_db, bad_query


def test_batched_and_one_by_one_descriptors_are_equal(tiny_world, model):
    paths = TestSet(tiny_world / "test").database_paths[:24]
    batched = describe_files(model, paths, batch_size=16, **QUIET)
    single = describe_files(model, paths, batch_size=1, **QUIET)
    assert batched.descriptors.shape == (24, model.descriptor_dim) and np.array_equal(batched.rows, np.arange(24))
    np.testing.assert_allclose(batched.descriptors, single.descriptors, rtol=1e-4, atol=1e-5)


def test_query_folders_share_one_database_pass_and_match_single_evaluations(tiny_world, model):
    counting = Counting(model)
    results = evaluate(counting, tiny_world / "test", "all", EvalConfig(**QUIET), model_name="tiny-vit")
    sets = [TestSet(tiny_world / "test", r.queries_folder) for r in results]
    assert [t.queries_folder for t in sets] == ["queries", "queries_night", "queries_occlusion"]
    assert counting.described == sets[0].database_num + sum(t.queries_num for t in sets)  # database once
    for test_set, result in zip(sets, results):
        assert result.queries_folder == test_set.queries_folder and result.recall.queries_num == 30
        assert result.as_dict()["database_num"] == 192 and result.as_dict()["model"] == "tiny-vit"
        # the same recall as the UTM formulation over the same predictions, and as evaluate() on this folder
        by_utm = compute_recalls(result.predictions, test_set.queries_utms, test_set.database_utms)
        assert by_utm.recalls == pytest.approx(result.recall.recalls)
        assert evaluate(model, test_set, cfg=EvalConfig(**QUIET))[0].recall.recalls == pytest.approx(result.recall.recalls)
    assert 0 < results[0].recall.recalls[20] <= 100 and results[0].recall.recalls[1] <= results[0].recall.recalls[5]


def test_one_query_at_a_time_gives_the_same_recalls(tiny_world, model):
    batched = evaluate(model, tiny_world / "test", "queries_night", EvalConfig(**QUIET))[0]
    single = evaluate(model, tiny_world / "test", "queries_night", EvalConfig(query_batch_size=1, **QUIET))[0]
    assert single.recall.recalls == batched.recall.recalls
    assert np.array_equal(single.predictions, batched.predictions)


@pytest.mark.parametrize("kind", ["flat-fp16", "hnsw"])
def test_other_index_kinds_agree_with_flat_on_a_small_database(tiny_world, model, kind):
    flat = evaluate(model, tiny_world / "test", cfg=EvalConfig(**QUIET))[0]
    other = evaluate(model, tiny_world / "test", cfg=EvalConfig(index=IndexConfig(kind=kind), **QUIET))[0]
    assert other.recall.recalls == pytest.approx(flat.recall.recalls, abs=100 / 30 + 1e-9)  # at most one query differs


def test_preloaded_images_give_the_same_recalls(tiny_world, model):
    test_set = TestSet(tiny_world / "test", "queries")
    images = torch.cat([b for b, _ in iter_image_batches(test_set.images_paths, model.image_size, batch_size=64)])
    model.train()
    assert evaluate(model, test_set, cfg=EvalConfig(**QUIET), images=images)[0].recall.recalls == pytest.approx(
        evaluate(model, test_set, cfg=EvalConfig(**QUIET))[0].recall.recalls)
    assert model.training  # the caller's mode is restored
    model.eval()


def test_bad_image_fail_names_the_file(broken_test_set, model):
    root, bad_db, _ = broken_test_set
    with pytest.raises(ImageDecodeError, match=bad_db.name[:40]) as info:
        evaluate(model, root, cfg=EvalConfig(**QUIET))
    assert "--on-bad-image skip" in str(info.value)


def test_bad_image_skip_excludes_database_images_and_counts_queries_as_misses(broken_test_set, model, tmp_path):
    root, bad_db, bad_query = broken_test_set
    cfg = EvalConfig(on_bad_image="skip", **QUIET)
    result = evaluate(model, root, cfg=cfg, model_name="m", save_dir=tmp_path / "saved")[0]
    assert result.as_dict()["database_num"] == 191 and result.as_dict()["database_skipped"] == 1
    assert result.recall.queries_num == 30 and result.as_dict()["queries_skipped"] == 1
    assert str(bad_db) not in result.database_paths and result.as_dict()["skipped_paths"] == [str(bad_db), str(bad_query)]
    q = list(result.queries.paths).index(str(bad_query))
    assert (result.predictions[q] == -1).all()  # a miss
    # recall over the 29 readable queries, rescaled to 30: the skipped one adds nothing
    readable = np.delete(np.arange(30), q)
    part = compute_recalls(result.predictions[readable], result.queries.utms[readable],
                           result.database.utms[result.database.rows])
    assert result.recall.recalls == pytest.approx({n: v * 29 / 30 for n, v in part.recalls.items()})
    # saved and re-read: the same counts and recalls, without the model
    again = evaluate(tmp_path / "saved", cfg=cfg)[0]
    assert again.recall.recalls == result.recall.recalls and again.recall.queries_num == 30
    assert again.as_dict()["database_skipped"] == 1 and again.as_dict()["queries_skipped"] == 1


def _reference_ids(database: np.ndarray, queries: np.ndarray, metric: str, k: int = 20) -> np.ndarray:
    """Top-k by brute force in float64: Euclidean distance of the raw vectors, or cosine."""
    d, q = database.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        d, q = d / np.linalg.norm(d, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    dist = ((q[:, None, :] - d[None, :, :]) ** 2).sum(axis=2)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def test_evaluation_searches_with_the_models_metric(tiny_world, model):
    sets = [TestSet(tiny_world / "test", "queries_night")]
    database = describe_files(model, sets[0].database_paths, **QUIET).descriptors
    queries = describe_files(model, sets[0].queries_paths, **QUIET).descriptors
    norms = np.linalg.norm(database, axis=1)
    assert model.metric == "l2" and norms.max() / norms.min() > 1.1  # raw ViT embeddings
    for metric, index in (("l2", IndexConfig()), ("cosine", IndexConfig(metric="cosine")), ("l2", IndexConfig(kind="hnsw"))):
        result = evaluate(model, sets[0], cfg=EvalConfig(index=index, **QUIET))[0]
        reference = compute_recalls(_reference_ids(database, queries, metric), sets[0].queries_utms, sets[0].database_utms)
        assert result.metric == result.as_dict()["metric"] == metric
        assert result.recall.recalls == pytest.approx(reference.recalls)
        assert evaluate(model, sets[0].root, "queries_night", EvalConfig(index=index, **QUIET))[0].recall.recalls == \
            pytest.approx(reference.recalls)
        if metric == "l2":  # scores: minus the Euclidean distance
            dist = np.linalg.norm(queries[:, None, :] - database[result.predictions], axis=2)
            np.testing.assert_allclose(result.scores, -dist, rtol=1e-3, atol=1e-3)


def test_saving_descriptors_does_not_change_the_run(tiny_world, model, tmp_path):
    plain = evaluate(model, tiny_world / "test", "all", EvalConfig(**QUIET))
    saving = evaluate(model, tiny_world / "test", "all", EvalConfig(**QUIET), save_dir=tmp_path / "saved")
    for a, b in zip(plain, saving):
        assert a.recall.recalls == b.recall.recalls
        assert np.array_equal(a.predictions, b.predictions) and np.array_equal(a.scores, b.scores)
    # evaluated later from the float16 copy, with the metric saved with it: float16 rounding only
    later = evaluate(tmp_path / "saved", None, "all", EvalConfig(**QUIET))
    for a, b in zip(plain, later):
        assert b.metric == "l2" and b.queries_folder == a.queries_folder
        np.testing.assert_allclose(b.scores[:, 0], a.scores[:, 0], rtol=2e-3, atol=2e-3)


def test_bad_inputs(tiny_world, model, tmp_path):
    with pytest.raises(ConfigError, match="choose one of"):
        evaluate(model, tiny_world / "test", "queries_v9")
    with pytest.raises(ConfigError, match="positive_dist"):
        EvalConfig(positive_dist=0)
    with pytest.raises(ConfigError, match="positive integers"):
        EvalConfig(recall_values=(0, 5))
    with pytest.raises(ConfigError, match="no saved descriptors"):
        evaluate(tmp_path)
    (tmp_path / "database").mkdir()
    with pytest.raises(DatasetError, match="meta.json is missing"):
        evaluate(tmp_path)
