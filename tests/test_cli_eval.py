"""``progeo eval``, ``progeo index build`` and ``progeo localize`` end to end on the tiny world
(in-process, with a saved tiny model so that every call uses the same weights)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from progeo.cli import main

pytestmark = pytest.mark.usefixtures("restore_threads")
FAST = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from progeo.models import build_model, save_model

    torch.manual_seed(0)
    return str(save_model(build_model("tiny-vit"), tmp_path_factory.mktemp("model") / "tiny"))


def _results(out) -> list[dict]:
    return json.loads((out / "results.json").read_text())["results"]


def _recalls(out) -> dict:
    return {r["name"]: r["recalls"] for r in _results(out)}


def test_eval_saved_descriptors_and_one_by_one_give_the_same_recalls(tiny_world, model_dir, tmp_path, capsys):
    test_set, val_set = str(tiny_world / "test"), str(tiny_world / "val")
    saved, out = tmp_path / "saved", tmp_path / "out"
    assert main(["eval", "--model", model_dir, "--test-set", test_set, val_set, "--queries", "all", "--out", str(out),
                 "--grids", "3", "--only-wrong", "--plot", "--save-descriptors", str(saved), *FAST]) == 0
    table = capsys.readouterr().out
    assert all(f"test/{q} " in table for q in ("queries", "queries_night", "queries_occlusion")) and "R@20" in table
    results = _results(out)
    assert [(r["dataset"], r["queries_folder"]) for r in results] == [
        (test_set, "queries"), (test_set, "queries_night"), (test_set, "queries_occlusion"), (val_set, "queries")]
    first = results[0]
    assert first["model"] == model_dir and first["image_size"] == [64, 64]
    assert (first["database_num"], first["queries_num"], first["database_skipped"]) == (192, 30, 0)
    assert results[3]["database_num"] == 144 and results[3]["name"] == "tiny_world/val/queries"
    assert set(first["recalls"]) == {"R@1", "R@5", "R@10", "R@20"}
    assert len(list((out / "grids").glob("*.jpg"))) == 4 and (out / "recalls.png").stat().st_size > 1000
    assert (saved / "tiny_world__test" / "database" / "meta.json").is_file()  # DIR/<dataset>/<folder>

    assert main(["eval", "--descriptors", str(saved), "--queries", "all", "--out", str(tmp_path / "again"), *FAST]) == 0
    assert _recalls(tmp_path / "again") == _recalls(out)
    assert main(["eval", "--model", model_dir, "--test-set", test_set, "--queries", "queries_night",
                 "--query-batch-size", "1", "--out", str(tmp_path / "single"), *FAST]) == 0
    name = "tiny_world/test/queries_night"
    assert _recalls(tmp_path / "single") == {name: _recalls(out)[name]}


def test_eval_bad_image_policies(tiny_world, model_dir, tmp_path, capsys):
    root = tmp_path / "copy" / "test"
    for folder in ("database", "queries"):
        shutil.copytree(tiny_world / "test" / folder, root / folder)
    bad = sorted((root / "database").iterdir())[7]
    bad.write_bytes(bad.read_bytes()[:200])
    args = ["eval", "--model", model_dir, "--test-set", str(root), "--out", str(tmp_path / "out"), *FAST]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot decode image {bad}" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--on-bad-image", "skip"]) == 0
    assert "1 database / 0 query image(s) skipped" in capsys.readouterr().out
    result = _results(tmp_path / "out")[0]
    assert (result["database_num"], result["database_skipped"], result["skipped_paths"]) == (191, 1, [str(bad)])


def test_index_build_then_localize(tiny_world, model_dir, tmp_path, capsys):
    index = tmp_path / "index"
    assert main(["index", "build", "--model", model_dir, "--database", str(tiny_world / "test" / "database"),
                 "--out", str(index), "--index", "hnsw", *FAST]) == 0
    assert "indexed 192 images (hnsw, l2 metric)" in capsys.readouterr().out
    night = tiny_world / "test" / "queries_night"
    one = sorted((tiny_world / "test" / "queries").iterdir())[0]
    files = {k: tmp_path / f"p.{k}" for k in ("json", "geojson", "html", "jpg")}
    assert main(["localize", str(night), str(one), "--index", str(index), "--top-k", "3", "--json", str(files["json"]),
                 "--geojson", str(files["geojson"]), "--map", str(files["html"]), "--grid", str(files["jpg"]), *FAST]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["query", "lat", "lon", "UTM"] and one.name in out
    predictions = json.loads(files["json"].read_text())["predictions"]
    assert len(predictions) == 31 and all(len(p["matches"]) == 3 for p in predictions)
    assert predictions[-1]["query"] == str(one)
    features = json.loads(files["geojson"].read_text())["features"]
    assert len(features) == 31 * 4 and features[0]["geometry"]["coordinates"] == [predictions[0]["lon"], predictions[0]["lat"]]
    assert "leaflet" in files["html"].read_text().lower() and files["jpg"].stat().st_size > 1000


def _reference_recalls(saved, folder: str, metric: str) -> dict:
    """Recall@N of saved descriptors by brute force in numpy (Euclidean on raw or unit vectors)."""
    from progeo.eval.descriptors_io import load_descriptors
    from progeo.eval.recall import compute_recalls

    db, q = (load_descriptors(saved / f).descriptors.astype(np.float64) for f in ("database", folder))
    if metric == "cosine":
        db, q = db / np.linalg.norm(db, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.argsort(((q[:, None, :] - db[None, :, :]) ** 2).sum(axis=2), axis=1, kind="stable")[:, :20]
    utms = (load_descriptors(saved / f).utms for f in (folder, "database"))
    return {f"R@{n}": v for n, v in compute_recalls(ids, *utms).recalls.items()}


def test_saving_descriptors_does_not_change_the_recalls(tiny_world, tmp_path):
    from progeo.models import build_model, save_model

    torch.manual_seed(4)  # with these weights, searching the float16 copy gave occlusion R@5 56.7 instead of 60.0
    model = str(save_model(build_model("tiny-rn"), tmp_path / "model"))
    for out, extra in (("plain", []), ("saving", ["--save-descriptors", str(tmp_path / "saved")])):
        assert main(["eval", "--model", model, "--test-set", str(tiny_world / "test"), "--queries", "all",
                     "--out", str(tmp_path / out), *extra, *FAST]) == 0
    assert _recalls(tmp_path / "saving") == _recalls(tmp_path / "plain")
    assert (tmp_path / "saved" / "tiny_world__test" / "queries_occlusion" / "meta.json").is_file()


def test_metric_is_the_models_unless_overridden(tiny_world, model_dir, tmp_path, capsys):
    test_set, name = str(tiny_world / "test"), "tiny_world/test/queries_night"
    saved = tmp_path / "saved"
    assert main(["eval", "--model", model_dir, "--test-set", test_set, "--queries", "queries_night",
                 "--out", str(tmp_path / "m"), "--save-descriptors", str(saved), *FAST]) == 0
    assert "flat index, l2 metric" in capsys.readouterr().out  # tiny-vit: the authors' ViT head, not normalized
    results = json.loads((tmp_path / "m" / "results.json").read_text())
    assert results["metric"] == "l2" and results["results"][0]["metric"] == "l2"
    saved_set = saved / "tiny_world__test"
    assert json.loads((saved_set / "database" / "meta.json").read_text())["metric"] == "l2"
    for metric, extra in (("l2", []), ("cosine", ["--metric", "cosine"])):  # saved: their metric, or overridden
        out = tmp_path / f"d_{metric}"
        assert main(["eval", "--descriptors", str(saved), "--queries", "queries_night", "--out", str(out), *extra, *FAST]) == 0
        assert json.loads((out / "results.json").read_text())["metric"] == metric
        assert _recalls(out)[name] == pytest.approx(_reference_recalls(saved_set, "queries_night", metric))
    assert main(["eval", "--model", model_dir, "--test-set", test_set, "--queries", "queries_night", "--metric", "cosine",
                 "--out", str(tmp_path / "c"), *FAST]) == 0
    assert json.loads((tmp_path / "c" / "results.json").read_text())["metric"] == "cosine"

    database = str(tiny_world / "test" / "database")
    photos = sorted((tiny_world / "test" / "queries_night").iterdir())[:5]
    predictions = {}
    for metric in ("l2", "cosine"):
        extra = ["--metric", "cosine"] if metric == "cosine" else []
        assert main(["index", "build", "--model", model_dir, "--database", database, "--out", str(tmp_path / metric),
                     *extra, *FAST]) == 0
        info = json.loads((tmp_path / metric / "index.json").read_text())
        assert info["metric"] == info["index"]["metric"] == metric
        for search_metric in ("l2", "cosine"):  # the index's, or re-indexed in memory for the other
            out = tmp_path / f"{metric}_{search_metric}.json"
            assert main(["localize", *map(str, photos), "--index", str(tmp_path / metric), "--json", str(out),
                         "--metric", search_metric, *FAST]) == 0
            assert f"({search_metric} metric)" in capsys.readouterr().out
            written = json.loads(out.read_text())
            assert written["metric"] == search_metric
            predictions[metric, search_metric] = [[m["database_index"] for m in p["matches"]] for p in written["predictions"]]
            scores = [m["score"] for p in written["predictions"] for m in p["matches"]]
            assert all(s <= 0 for s in scores) if search_metric == "l2" else all(-1 <= s <= 1 for s in scores)
    assert predictions["l2", "l2"] == predictions["cosine", "l2"]
    assert predictions["cosine", "cosine"] == predictions["l2", "cosine"]


def test_cli_errors(tiny_world, model_dir, tmp_path, capsys):
    test_set = str(tiny_world / "test")
    cases = [
        (["eval", "--model", model_dir], "--test-set DIR is needed"),
        (["eval", "--model", model_dir, "--test-set", test_set, "--resize", "1", "2", "3"], "give H W"),
        (["eval", "--model", model_dir, "--test-set", test_set, "--queries", "queries_v9"], "choose one of"),
        (["eval", "--model", str(tmp_path / "nothing"), "--test-set", test_set], "no saved model"),
        (["eval", "--model", model_dir, "--test-set", test_set, "--resize", "96"], "drop --resize"),
        (["eval", "--model", model_dir, "--test-set", test_set, "--index", "ivfpq"], "use --index flat or hnsw"),
        (["eval", "--descriptors", str(tmp_path)], "no saved descriptors"),
        (["localize", test_set, "--index", str(tmp_path)], "not a complete index folder"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(tmp_path / "o"), *FAST] if args[0] == "eval" else [*args, *FAST]) == 2, args
        assert message in capsys.readouterr().err, args
