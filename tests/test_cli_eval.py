"""``progeo eval``, ``progeo index build`` and ``progeo localize`` end to end on the tiny world
(in-process, with a saved tiny model so that every call uses the same weights)."""

from __future__ import annotations

import json
import shutil

import faiss
import pytest
import torch

from progeo.cli import main

FAST = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


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
    assert "indexed 192 images (hnsw)" in capsys.readouterr().out
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
