"""GEM zero-shot: prompt ensembling, country aggregation, ranking, ground truth, metrics and the tiny world."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from progeo.errors import ConfigError, DatasetError
from progeo.geo import Place, PlaceList
from progeo.geo.labelled_images import LabelledImages
from progeo.geo.places import load_candidate_places
from progeo.geo.report import ClassTable, Predictions, gem_metrics, rank_top_k, true_classes
from progeo.geo.zeroshot import ZeroShotClassifier, aggregate_country_scores, ensemble_text_features, zeroshot_scores

KM_PER_DEGREE = 6371.0088 * np.pi / 180  # along the equator


def _places() -> PlaceList:  # on the equator: distances are multiples of KM_PER_DEGREE
    return PlaceList([Place("A1", "Aland", 0.0, 0.0), Place("B1", "Bland", 0.0, 1.0), Place("B2", "Bland", 0.0, 3.0),
                      Place("B3", "Bland", 0.0, 10.0)], source="test places")


def _labels(cities, countries, lat, lon) -> LabelledImages:
    n = len(lat)
    return LabelledImages([f"img{i}.jpg" for i in range(n)], np.array(lat, float), np.array(lon, float), list(cities),
                          list(countries), "placepulse", "labels.csv")


def test_ensemble_equals_the_manual_computation():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 4, 8)).astype(np.float32) * rng.uniform(0.1, 5, size=(3, 4, 1)).astype(np.float32)
    got = ensemble_text_features(t)
    for c in range(3):
        units = [t[c, j] / np.linalg.norm(t[c, j]) for j in range(4)]
        mean = sum(units) / 4
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # normalizing first matters: a long text vector does not dominate the average
    assert not np.allclose(got[0], t[0].mean(0) / np.linalg.norm(t[0].mean(0)), atol=1e-3)


def test_class_texts_are_encoded_then_ensembled(tmp_path):
    from progeo.geo.zeroshot import encode_class_texts
    from progeo.models.backbones import load_clip
    from progeo.models.inference import encode_texts

    clip = load_clip("tiny-rn")
    texts = [["a photo of Oslo, Norway.", "a street in Oslo, Norway."], ["a photo of Kyoto, Japan.", "Kyoto at dusk."]]
    got = encode_class_texts(clip, texts)
    for c, group in enumerate(texts):
        single = [encode_texts(clip, [t])[0] for t in group]
        units = [f / np.linalg.norm(f) for f in single]
        mean = (units[0] + units[1]) / 2
        np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="same, non-zero number of texts"):
        encode_class_texts(clip, [["one"], ["two", "three"]])


def test_cosine_scores_and_dimension_mismatch():
    s = zeroshot_scores(np.array([[3.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(s, [[1.0, 0.0], [2 ** -0.5, 2 ** -0.5]], atol=1e-6)
    with pytest.raises(ConfigError, match="not the same model"):
        zeroshot_scores(np.ones((1, 3)), np.ones((2, 4)))


def test_country_aggregation_max_and_logsumexp_by_hand():
    city = np.array([[0.1, 0.5, 0.3], [0.2, 0.1, 0.4]])
    country_of_city = np.array([1, 1, 0])  # cities 0, 1 in country 1; city 2 in country 0
    np.testing.assert_allclose(aggregate_country_scores(city, country_of_city, 2, "max"), [[0.3, 0.5], [0.4, 0.2]])
    lse = aggregate_country_scores(city, country_of_city, 2, "logsumexp", scale=1.0)
    np.testing.assert_allclose(lse, [[0.3, np.log(np.exp(0.1) + np.exp(0.5))], [0.4, np.log(np.exp(0.2) + np.exp(0.1))]],
                               rtol=1e-6)
    with pytest.raises(ConfigError, match="countries without a candidate city"):
        aggregate_country_scores(city, np.array([0, 0, 0]), 2)
    with pytest.raises(ConfigError, match="reduction"):
        aggregate_country_scores(city, country_of_city, 2, "mean")


def _country_classifier(reduce: str) -> ZeroShotClassifier:
    places = _places()
    classes = ClassTable.from_places(places, "country")
    return ZeroShotClassifier(classes, np.eye(4, dtype=np.float32), places, "aggregate", reduce,
                              city_country=classes.country_index(places.countries, "test"))


def test_country_aggregate_predicts_the_best_city_of_the_predicted_country():
    feats = np.array([[0.90, 0.89, 0.89, 0.89], [0.1, 0.2, 0.9, 0.3]], dtype=np.float32)
    by_max = _country_classifier("max").predict(feats, ["a.jpg", "b.jpg"])
    assert [by_max.classes.names[i] for i in by_max.top_index[:, 0]] == ["Aland", "Bland"]
    assert (by_max.pred_lat[0], by_max.pred_lon[0]) == (0.0, 0.0)  # A1
    assert (by_max.pred_lat[1], by_max.pred_lon[1]) == (0.0, 3.0)  # B2, the best city of Bland
    by_lse = _country_classifier("logsumexp").predict(feats, ["a.jpg", "b.jpg"])
    # three Bland cities at 0.89: 0.89 + log(3)/100 > 0.90, so logsumexp picks Bland for image 0,
    # placed at Bland's best city (B1, first of the tie), not at the overall best city A1
    assert by_lse.classes.names[by_lse.top_index[0, 0]] == "Bland"
    assert (by_lse.pred_lat[0], by_lse.pred_lon[0]) == (0.0, 1.0)


def test_country_prompts_classes_sit_at_their_medoid_city():
    from progeo.geo.report import geo_medoid

    classes = ClassTable.from_places(_places(), "country")
    assert classes.names == ["Aland", "Bland"]
    # Bland's cities at 1, 3 and 10 degrees east: total distances 2+9, 2+7, 9+7 degrees -> B2
    assert (classes.lat[1], classes.lon[1]) == (0.0, 3.0) and (classes.lat[0], classes.lon[0]) == (0.0, 0.0)
    lon = np.arange(5000) % 7 + 0.0  # sampled above max_points: still a point of the input, near the middle
    assert geo_medoid(np.zeros(5000), lon, max_points=100) == (0.0, 3.0)


def test_rank_top_k_orders_best_first_with_ties_by_index():
    idx, val = rank_top_k(np.array([[0.1, 0.7, 0.7, 0.3], [0.5, 0.1, 0.2, 0.9]]), 3)
    assert idx.tolist() == [[1, 2, 3], [3, 0, 2]]
    np.testing.assert_allclose(val, [[0.7, 0.7, 0.3], [0.9, 0.5, 0.2]])
    assert rank_top_k(np.array([[0.2, 0.1]]), 5)[0].tolist() == [[0, 1]]  # k is capped at the classes


def test_metrics_against_hand_computed_distances():
    places = _places()
    classes = ClassTable.from_places(places, "city")
    # predicted cities per image: A1, B1, B3, B2; true cities: A1, A1, B3, B1
    top = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0], [2, 3, 1, 0]])
    pred = Predictions(classes, [f"{i}.jpg" for i in range(4)], top, np.zeros((4, 4), np.float32),
                       places.lats[top[:, 0]], places.lons[top[:, 0]])
    labels = _labels(["A1", "A1", "B3", "B1"], ["", "", "", ""], [0, 0, 0, 0], [0.0, 0.0, 10.0, 1.0])
    targets, countries = true_classes(labels, classes)
    assert targets.tolist() == [0, 0, 3, 1] and countries == ["Aland", "Aland", "Bland", "Bland"]
    m = gem_metrics(pred, targets, labels.lat, labels.lon, countries)
    # errors: 0, 1 degree, 0, 2 degrees of the equator
    assert m["top1"] == pytest.approx(0.5)
    assert m["top5"] is None  # only 4 classes: top-5 is not defined
    assert m["median_km"] == pytest.approx(0.5 * KM_PER_DEGREE, rel=1e-9)
    assert m["within_1km"] == 0.5 and m["within_25km"] == 0.5
    assert m["within_200km"] == 0.75 and m["within_750km"] == 1.0
    assert m["country_accuracy"] == 0.75  # image 1 (Aland) predicted in Bland
    assert m["country_confusion"] == {"countries": ["Aland", "Bland"], "counts": [[1, 1], [0, 2]]}
    assert m["per_country"][0]["confused_with"] == "Bland"


def test_true_classes_gps_only_unknown_city_and_missing_country():
    classes = ClassTable.from_places(_places(), "city")
    gps_only = _labels(["", ""], ["", ""], [0.2, -0.1], [9.0, 1.4])  # IM2GPS3k: nearest candidate
    assert true_classes(gps_only, classes)[0].tolist() == [3, 1]
    with pytest.raises(DatasetError, match=r"'Atlantis' is not a candidate place"):
        true_classes(_labels(["Atlantis"], [""], [0], [0]), classes)
    countries = ClassTable.from_places(_places(), "country")
    with pytest.raises(DatasetError, match="no country column; pass the candidate places"):
        true_classes(gps_only, countries)
    assert true_classes(gps_only, countries, _places())[1] == ["Bland", "Bland"]
    with pytest.raises(DatasetError, match=r"1 country of the labels not among the 2 classes.*'Cland'"):
        true_classes(_labels(["B1"], ["Cland"], [0], [1]), countries)


def test_predictions_files(tmp_path):
    classes = ClassTable.from_places(_places(), "city")
    pred = Predictions(classes, ["x.jpg"], np.array([[2, 0]]), np.array([[0.9, 0.1]], np.float32),
                       np.array([0.0]), np.array([3.0]))
    with open(pred.write(tmp_path / "p.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"image": "x.jpg", "lat": "0.0", "lon": "3.0", "top1": "B2", "top1_country": "Bland",
                     "top1_cosine": "0.9", "top2": "A1", "top2_country": "Aland", "top2_cosine": "0.1"}]
    data = json.loads(pred.write(tmp_path / "p.json", top=1).read_text())
    assert data["images"] == [{"image": "x.jpg", "lat": 0.0, "lon": 3.0, "top1": "B2", "top1_country": "Bland",
                               "top1_cosine": 0.9}]


def test_candidate_places(tiny_world, tmp_path):
    world = load_candidate_places(str(tiny_world))
    assert world.names == ["Lisbon", "Porto", "Oslo"] and world.countries == ["Portugal", "Portugal", "Norway"]
    big = load_candidate_places("world:5000000")
    assert len(big) > 10 and min(p.population for p in big) >= 5_000_000
    with pytest.raises(ConfigError, match="world:N"):
        load_candidate_places("world:many")
    with pytest.raises(DatasetError, match="not found"):
        load_candidate_places(tmp_path / "nowhere.csv")


def test_zeroshot_beats_chance_on_the_tiny_world(pretrained_tiny_clip, tiny_world, tmp_path):
    from progeo.geo.zeroshot import ZeroShotConfig, run_zeroshot

    weights, backbone = pretrained_tiny_clip
    with open(tiny_world / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["path"].startswith("test/")]
    test_csv = tmp_path / "test_labels.csv"
    with open(test_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = ZeroShotConfig(model=backbone, weights=str(weights), images=str(test_csv), images_dir=str(tiny_world),
                         places=str(tiny_world), device="cpu", cache_dir=str(weights.parent / "gem-cache"), progress=False,
                         out_dir=str(tmp_path / "out"))
    run = run_zeroshot(cfg)
    assert run.metrics["n_images"] == len(rows) and run.metrics["classes"] == 3
    assert run.metrics["top1"] > 1 / 3 + 0.15, run.metrics  # chance is 1/3
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["top1"] == run.metrics["top1"] and saved["model"]["weights"] == str(weights.resolve())
    assert len(saved["templates"]) == 8


def test_image_features_cache_and_bad_image_policy(tiny_world, tmp_path):
    import shutil

    from progeo.errors import ImageDecodeError
    from progeo.geo.features import image_features
    from progeo.models.backbones import load_clip

    sources = sorted((tiny_world / "test" / "queries").glob("*.jpg"))[:3]
    paths = [shutil.copy(p, tmp_path / f"{i}.jpg") for i, p in enumerate(sources)]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    paths.insert(1, str(tmp_path / "broken.jpg"))
    clip = load_clip("tiny-rn")
    cache = tmp_path / "cache"
    with pytest.raises(ImageDecodeError, match="broken.jpg.*--on-bad-image skip"):
        image_features(clip, paths, cache_dir=cache, progress=False)
    first = image_features(clip, paths, on_bad_image="skip", cache_dir=cache, progress=False)
    assert first.kept.tolist() == [0, 2, 3] and first.skipped == [str(tmp_path / "broken.jpg")]
    assert first.features.shape == (3, 64) and not first.hit
    np.testing.assert_allclose(np.linalg.norm(first.features, axis=1), 1.0, rtol=1e-3)
    again = image_features(clip, paths, on_bad_image="skip", cache_dir=cache, progress=False)
    assert again.hit and again.kept.tolist() == [0, 2, 3]  # the bad image is remembered: no failed extraction
    np.testing.assert_array_equal(again.features, first.features)
    shutil.copy(sources[0], tmp_path / "broken.jpg")  # repaired: decoded again
    fixed = image_features(clip, paths, on_bad_image="skip", cache_dir=cache, progress=False)
    assert fixed.kept.tolist() == [0, 1, 2, 3] and fixed.skipped == []
