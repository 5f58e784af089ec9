"""GEM linear probe: training, l2 selection, classes, the saved format and its errors, and the world report."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from progeo.errors import CheckpointError, DatasetError
from progeo.geo import Place, PlaceList
from progeo.geo.features import ModelSpec
from progeo.geo.labelled_images import LabelledImages
from progeo.geo.probe import (LinearProbe, load_probe, probe_classes, select_l2, stratified_split,
                              train_logistic_regression)
from progeo.geo.report import ClassTable

SPEC = ModelSpec("tiny-rn", "/w/clip.safetensors", "tiny-rn", 4, "ab" * 20)


def _blobs(n_per_class, seed: int = 0, spread: float = 0.6):
    counts = [n_per_class] * 3 if isinstance(n_per_class, int) else list(n_per_class)
    rng = np.random.default_rng(seed)
    centres = np.array([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    x = np.concatenate([c + spread * rng.normal(size=(n, 4)) for c, n in zip(centres, counts)]).astype(np.float32)
    return torch.from_numpy(x), torch.arange(3).repeat_interleave(torch.tensor(counts))


def test_logistic_regression_learns_and_l2_shrinks_the_weights():
    x, y = _blobs(40)
    w_weak, b_weak = train_logistic_regression(x, y, 3, 1e-6, max_iter=50)
    assert ((x @ w_weak.T + b_weak).argmax(1) == y).float().mean() > 0.95
    w_strong, _ = train_logistic_regression(x, y, 3, 1e-1, max_iter=50)
    assert w_strong.norm() < 0.5 * w_weak.norm()


def test_l2_grid_logs_every_value_and_keeps_the_best(caplog):
    x, y = _blobs((90, 15, 15), seed=1)  # imbalanced: a huge l2 leaves only the bias, i.e. the majority class
    xv, yv = _blobs(30, seed=2)
    with caplog.at_level(logging.INFO, logger="progeo.geo.probe"):
        best, accs, (w, b) = select_l2(x, y, xv, yv, 3, (1e-4, 1e-2, 100.0), max_iter=50)
    assert set(accs) == {1e-4, 1e-2, 100.0}
    assert best == max(accs, key=lambda k: (accs[k], k))  # ties go to the stronger regularization
    assert accs[100.0] < accs[best] - 0.3  # a huge l2 underfits
    for value in ("l2=0.0001 val top-1", "l2=0.01 val top-1", "l2=100 val top-1", "chose l2="):
        assert value in caplog.text
    assert ((xv @ w.T + b).argmax(1) == yv).float().mean() == pytest.approx(accs[best])


def test_stratified_split_keeps_every_class_in_training():
    y = np.array([0] * 10 + [1] * 5 + [2])
    train, val = stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(16))
    assert np.bincount(y[val], minlength=3).tolist() == [2, 1, 0]
    assert set(y[train]) == {0, 1, 2}
    with pytest.raises(DatasetError, match="leaves no validation image"):
        stratified_split(np.array([0, 1]), 0.2)


def _labels(cities, countries, lat, lon) -> LabelledImages:
    return LabelledImages([f"{i}.jpg" for i in range(len(lat))], np.array(lat, float), np.array(lon, float), cities,
                          countries, "synthetic", "train.csv")


def test_probe_classes_from_labels_and_from_places():
    labels = _labels(["Porto", "Lisbon", "porto", "Oslo"], ["Portugal", "Portugal", "Portugal", "Norway"],
                     [41.0, 38.7, 41.2, 59.9], [-8.6, -9.1, -8.6, 10.7])
    table, y = probe_classes(labels, "city")
    assert table.names == ["Oslo", "Lisbon", "Porto"]  # sorted by (country, city); spellings of the first image
    assert y.tolist() == [2, 1, 2, 0]
    assert (table.lat[2], table.lon[2]) == (41.0, -8.6)  # the medoid of the two Porto images (first of the tie)
    countries, yc = probe_classes(labels, "country")
    assert countries.names == ["Norway", "Portugal"] and yc.tolist() == [1, 1, 1, 0]
    places = PlaceList([Place("Oslo", "Norway", 59.91, 10.75), Place("Bergen", "Norway", 60.39, 5.32),
                        Place("Porto", "Portugal", 41.16, -8.63)])
    gps = _labels(["", ""], ["", ""], [60.0, 41.0], [6.0, -8.0])  # IM2GPS3k-style: nearest candidate
    table, y = probe_classes(gps, "city", places)
    assert table.names == ["Bergen", "Porto"] and y.tolist() == [0, 1] and table.lat[0] == 60.39
    with pytest.raises(DatasetError, match="no city labels; pass candidate places"):
        probe_classes(gps, "city")
    with pytest.raises(DatasetError, match="no country column"):
        probe_classes(gps, "country")


def _probe(tmp_path=None) -> LinearProbe:
    rng = np.random.default_rng(0)
    classes = ClassTable("city", ["Oslo", "Kyoto"], ["Norway", "Japan"], np.array([59.9, 35.0]), np.array([10.7, 135.8]))
    return LinearProbe(classes, rng.normal(size=(2, 4)).astype(np.float32), np.array([0.1, -0.1], np.float32),
                       np.zeros(4, np.float32), np.ones(4, np.float32), SPEC, 1e-3, {1e-3: 0.9, 1e-2: 0.8})


def test_save_load_round_trip(tmp_path):
    probe = _probe()
    probe.save(tmp_path / "probe")
    meta = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert meta["classes"][1] == {"name": "Kyoto", "country": "Japan", "lat": 35.0, "lon": 135.8}
    assert meta["model"]["visual_sha1"] == SPEC.visual_sha1 and meta["l2"] == 1e-3
    assert meta["val_accuracy"] == {"0.001": 0.9, "0.01": 0.8} and "feature_normalization" in meta
    for path in (tmp_path / "probe", tmp_path / "probe" / "probe.json", tmp_path / "probe" / "probe.safetensors"):
        loaded = load_probe(path)
        feats = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
        np.testing.assert_allclose(loaded.logits(feats), probe.logits(feats), rtol=1e-6)
        assert loaded.model == SPEC and loaded.classes.names == ["Oslo", "Kyoto"]
    pred = loaded.predict(feats, [f"{i}.jpg" for i in range(5)])
    np.testing.assert_allclose(pred.top_score.sum(1), 1.0, rtol=1e-5)  # softmax over 2 classes
    assert pred.pred_lat[pred.top_index[:, 0] == 1].tolist() == [35.0] * int((pred.top_index[:, 0] == 1).sum())


def test_wrong_probe_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_probe(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a linear probe: it needs probe.safetensors and probe.json"):
        load_probe(tmp_path / "empty")
    good = _probe().save(tmp_path / "good")
    (good / "probe.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a progeo linear probe description"):
        load_probe(good)
    bad = _probe().save(tmp_path / "bad")
    (bad / "probe.safetensors").write_bytes(b"this is not safetensors")
    with pytest.raises(CheckpointError, match=r"probe weights .*probe.safetensors is unreadable.*progeo probe fit"):
        load_probe(bad)
    shapes = _probe().save(tmp_path / "shapes")
    meta = json.loads((shapes / "probe.json").read_text())
    meta["classes"].append({"name": "Lima", "country": "Peru", "lat": -12.0, "lon": -77.0})
    (shapes / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit 3 classes"):
        load_probe(shapes)


def test_a_probe_refuses_another_models_features():
    probe = _probe()
    probe.check_model(SPEC)
    with pytest.raises(CheckpointError, match=r"fit on 4-d features of tiny-rn.*gives 512-d features.*--model tiny-rn"):
        probe.check_model(ModelSpec("ViT-B-32:openai", None, "ViT-B-32", 512, "cd" * 20))
    with pytest.raises(CheckpointError, match="other image-tower weights"):
        probe.check_model(ModelSpec("tiny-rn", "/other.safetensors", "tiny-rn", 4, "ef" * 20))
    with pytest.raises(CheckpointError, match="expects 4-d features, got 8-d"):
        probe.logits(np.zeros((1, 8), np.float32))


def test_gem_report_probe_beats_zeroshot_beats_chance(pretrained_tiny_clip, tiny_world, tmp_path):
    from progeo.geo.gem_report import run_gem_report

    weights, backbone = pretrained_tiny_clip
    report = run_gem_report(tiny_world, weights, backbone, tmp_path / "report", cache_dir=weights.parent / "gem-cache",
                            grid=(1e-5, 1e-3, 1e-1), max_iter=60)
    runs = report["runs"]
    assert set(runs) == {"zero-shot city", "zero-shot country", "linear probe city", "linear probe country"}
    assert runs["zero-shot city"]["top1"] > 1 / 3 + 0.15
    assert runs["linear probe city"]["top1"] > runs["zero-shot city"]["top1"]
    # two countries: both are well above chance (the zero-shot city scores aggregate well at this level)
    assert runs["linear probe country"]["top1"] > 0.7 and runs["zero-shot country"]["top1"] > 0.7
    assert all(r["n_images"] == report["test_images"] for r in runs.values())
    city = runs["linear probe city"]  # the grid, widened past its weak edge when 1e-5 wins
    assert {"1e-05", "0.001", "0.1"} <= set(city["val_accuracy"])
    assert city["val_accuracy"][f"{city['l2']:g}"] == max(city["val_accuracy"].values())
    assert "| linear probe city | city |" in report["markdown"] and "| n/a |" in report["markdown"]
    assert (tmp_path / "report" / "gem_report.md").read_text().strip() == report["markdown"]
    assert (tmp_path / "report" / "zero-shot-city" / "predictions.csv").is_file()
