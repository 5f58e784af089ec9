"""Geo metrics against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from progeo.geo.metrics import (
    DEFAULT_THRESHOLDS_KM,
    EARTH_RADIUS_KM,
    country_confusion,
    geo_metrics,
    haversine_km,
    median_km,
    share_within_km,
    topk_accuracy,
    topk_accuracy_ranked,
)

PARIS = (48.8566, 2.3522)
LONDON = (51.5074, -0.1278)


def test_haversine_hand_examples():
    assert EARTH_RADIUS_KM == 6371.0088
    assert float(haversine_km(*PARIS, *LONDON)) == pytest.approx(343.5, abs=0.5)
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(math.pi * EARTH_RADIUS_KM, rel=1e-12)  # ~20015 km
    assert float(haversine_km(0, 0, 0, 180)) == pytest.approx(20015.1, abs=0.1)
    assert float(haversine_km(-33.9, 151.2, 33.9, -28.8)) == pytest.approx(20015.1, abs=0.1)  # Sydney's antipode
    assert float(haversine_km(*PARIS, *PARIS)) == 0.0
    assert float(haversine_km(0, 0, 90, 0)) == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)
    # across the date line: 2 degrees of equator, not 358
    assert float(haversine_km(0, 179, 0, -179)) == pytest.approx(2 * math.pi / 180 * EARTH_RADIUS_KM)


def test_haversine_matches_spherical_law_of_cosines_and_broadcasts():
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-80, 80, 20), rng.uniform(-80, 80, 20)
    lon1, lon2 = rng.uniform(-180, 180, 20), rng.uniform(-180, 180, 20)
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    cos_c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    expected = EARTH_RADIUS_KM * np.arccos(np.clip(cos_c, -1, 1))
    np.testing.assert_allclose(haversine_km(lat1, lon1, lat2, lon2), expected, rtol=1e-7, atol=1e-6)
    matrix = haversine_km(lat1[:, None], lon1[:, None], lat2[None], lon2[None])
    assert matrix.shape == (20, 20)
    np.testing.assert_allclose(np.diag(matrix), expected, rtol=1e-7, atol=1e-6)
    assert float(haversine_km(torch.tensor(PARIS[0]), PARIS[1], *LONDON)) == pytest.approx(343.5, abs=0.5)


def test_thresholds_and_median_on_hand_example():
    dist = [0.5, 1.0, 10.0, 300.0, 1000.0, 3000.0]
    share = share_within_km(dist)
    assert list(share) == list(DEFAULT_THRESHOLDS_KM)
    # <= is inclusive: 1.0 km counts within 1 km
    assert share == {1.0: 2 / 6, 25.0: 3 / 6, 200.0: 3 / 6, 750.0: 4 / 6, 2500.0: 5 / 6}
    assert median_km(dist) == pytest.approx((10.0 + 300.0) / 2)
    assert median_km([7.0, 1.0, 3.0]) == 3.0
    with pytest.raises(ValueError, match="empty"):
        median_km([])
    with pytest.raises(ValueError, match="NaN"):
        share_within_km([1.0, float("nan")])


def test_topk_from_scores_with_ties_against_prediction():
    scores = np.array([
        [0.9, 0.1, 0.0, 0.0],   # true 0: rank 1
        [0.5, 0.4, 0.3, 0.2],   # true 2: rank 3
        [0.2, 0.2, 0.1, 0.0],   # true 1: tied with class 0 -> rank 2 (ties count against)
        [0.3, 0.3, 0.3, 0.3],   # true 3: all tied -> rank 4
    ])
    targets = [0, 2, 1, 3]
    acc = topk_accuracy(scores, targets, ks=(1, 2, 3, 4, 5))
    assert acc == {1: 1 / 4, 2: 2 / 4, 3: 3 / 4, 4: 1.0, 5: 1.0}
    assert topk_accuracy(torch.tensor(scores, dtype=torch.bfloat16), targets, ks=(1,))[1] == 1 / 4


def test_topk_from_ranked_predictions():
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
    assert topk_accuracy_ranked(ranked, [2, 0, 1], ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    with pytest.raises(ValueError, match="at least 5"):
        topk_accuracy_ranked(ranked, [2, 0, 1], ks=(5,))
    with pytest.raises(ValueError, match="targets"):
        topk_accuracy_ranked(ranked, [2, 0], ks=(1,))


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        topk_accuracy(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="matrix"):
        topk_accuracy(np.zeros(3), [0, 1, 2])


def test_country_confusion_counts_and_formatters():
    true = ["France", "France", "France", "Italy", "Spain"]
    pred = ["France", "Italy", "Italy", "Italy", "France"]
    conf = country_confusion(true, pred)
    assert conf.countries == ["France", "Italy", "Spain"]
    assert conf.counts.tolist() == [[1, 2, 0], [0, 1, 0], [1, 0, 0]]
    assert conf.total == 5 and conf.accuracy == pytest.approx(2 / 5)
    rows = conf.per_country()
    assert [r["country"] for r in rows] == ["France", "Italy", "Spain"]
    assert rows[0] == {"country": "France", "images": 3, "correct": 1, "accuracy": pytest.approx(1 / 3),
                       "confused_with": "Italy", "confused_count": 2}
    md = conf.to_markdown()
    assert md.splitlines()[0].startswith("| country | images | correct |")
    assert "| France | 3 | 1 | 33.3 % | Italy (2) |" in md
    assert "| **all** | 5 | 2 | 40.0 % |" in md
    assert len(conf.to_markdown(top=1).splitlines()) == 4  # header, rule, France, all
    text = conf.to_text()
    assert "Spain" in text and "France (1)" in text
    assert json.loads(json.dumps(conf.to_dict()))["counts"][0] == [1, 2, 0]
    with pytest.raises(ValueError):
        country_confusion(["France"], [])


def test_geo_metrics_one_json_dict():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    m = geo_metrics(
        true_lat=[PARIS[0]] * 3, true_lon=[PARIS[1]] * 3,
        pred_lat=[PARIS[0], LONDON[0], PARIS[0]], pred_lon=[PARIS[1], LONDON[1], PARIS[1]],
        scores=scores, targets=[0, 1, 1], ks=(1, 2),
        true_countries=["France"] * 3, pred_countries=["France", "United Kingdom", "France"],
    )
    assert m["n_images"] == 3
    assert m["top1"] == pytest.approx(2 / 3) and m["top2"] == 1.0
    assert m["median_km"] == 0.0 and m["mean_km"] == pytest.approx(343.5 / 3, abs=0.5)
    assert m["within_1km"] == pytest.approx(2 / 3) and m["within_750km"] == 1.0
    assert m["country_accuracy"] == pytest.approx(2 / 3)
    assert json.loads(json.dumps(m)) == m
    only_coords = geo_metrics(true_lat=[0], true_lon=[0], pred_lat=[0], pred_lon=[0])
    assert set(only_coords) >= {"n_images", "median_km", "within_2500km"} and "top1" not in only_coords


def test_geo_metrics_rejects_inconsistent_input():
    with pytest.raises(ValueError, match="nothing to evaluate"):
        geo_metrics()
    with pytest.raises(ValueError, match="all of"):
        geo_metrics(true_lat=[0], true_lon=[0], pred_lat=[0])
    with pytest.raises(ValueError, match="differ"):
        geo_metrics(true_lat=[0, 1], true_lon=[0, 1], pred_lat=[0, 1], pred_lon=[0, 1],
                    ranked=[[0]], targets=[0], ks=(1,))
    with pytest.raises(ValueError, match="exactly one"):
        geo_metrics(targets=[0], scores=[[1.0]], ranked=[[0]])
