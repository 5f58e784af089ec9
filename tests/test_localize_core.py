import json

import numpy as np
import pytest
import utm

from progeo.errors import ConfigError, DatasetError
from progeo.eval.confidence import accuracy_coverage, accuracy_coverage_auc
from progeo.eval.localize_core import (
    DatabaseCoordinates,
    cosine_scale_scores,
    format_predictions_table,
    haversine_m,
    predict_positions,
    predictions_to_geojson,
    prediction_rows,
    utm_zones,
    write_geojson,
    write_map,
    write_predictions_json,
)

# San Francisco, zone 10S; offsets in metres from the first image.
OFFSETS = np.array([[0, 0], [10, 0], [300, 0], [1000, 0], [0, 20]], dtype=float)
EAST, NORTH = 551000.0 + OFFSETS[:, 0], 4180000.0 + OFFSETS[:, 1]
PATHS = [f"database/img_{i}.jpg" for i in range(5)]


@pytest.fixture
def database():
    return DatabaseCoordinates.from_utm(EAST, NORTH, [10] * 5, ["s"] * 5, PATHS)


@pytest.fixture
def predictions(database):
    ids = np.array([[0, 1, 2, 4], [1, 0, 4, -1]])
    scores = np.array([[0.9, 0.85, 0.8, 0.7], [0.7, 0.69, 0.6, -np.inf]])
    return predict_positions(ids, scores, database, ["photo_a.jpg", "photo_b.jpg"])


def test_position_and_confidence(predictions):
    a, b = predictions
    lat, lon = utm.to_latlon(EAST[0], NORTH[0], 10, "S")
    assert (a.lat, a.lon) == pytest.approx((lat, lon)) and (a.utm_east, a.utm_north) == (EAST[0], NORTH[0])
    assert (a.utm_zone_number, a.utm_zone_letter) == (10, "S")
    # a: runner-ups ids 1 (10 m), 2 (300 m), 4 (20 m): 2 of 3 at the place, 3 of 3 in the city
    assert (a.runner_ups, a.agreeing, a.agreeing_city) == (3, 2, 3)
    w = np.exp((np.array([0.9, 0.85, 0.8, 0.7]) - 0.9) / 0.05)  # similarity weights; id 2 is at another place
    assert a.confidence == pytest.approx(((w.sum() - w[2]) / w.sum() + 1) / 2)
    assert [m.distance_to_prediction_m for m in a.matches] == pytest.approx([0, 10, 300, 20])
    assert [m.rank for m in a.matches] == [1, 2, 3, 4] and a.matches[2].path == "database/img_2.jpg"
    # b: two runner-ups (the third column is empty), both within 25 m of the best (id 1)
    assert b.lat == pytest.approx(utm.to_latlon(EAST[1], NORTH[1], 10, "S")[0])
    assert (b.runner_ups, b.agreeing, b.agreeing_city) == (2, 2, 2) and b.confidence == 1.0
    assert len(b.matches) == 3 and b.matches[2].distance_to_prediction_m == pytest.approx(np.hypot(10, 20))


def _two_cities():
    """10 images in Lisbon and 10 in Porto (274 km apart), each city's images 2 m apart."""
    lat = np.r_[38.7223 + np.arange(10) * 1.8e-5, 41.1579 + np.arange(10) * 1.8e-5]
    lon = np.r_[np.full(10, -9.1393), np.full(10, -8.6291)]
    return DatabaseCoordinates.from_latlon(lat, lon)


def test_wrong_city_answer_ranks_below_right_ones():
    """The issue's case: wrong-city answers with similarity gaps of 0.04 and 0.004 were mixed
    among right answers; the right ones' best matches agree (or stand out), the wrong ones' do not."""
    database = _two_cities()
    porto, lisbon = np.arange(10, 20), np.arange(10)
    ids = np.stack([np.r_[porto[0], lisbon[:9]],  # wrong: best match in Porto, the other nine in Lisbon
                    np.r_[porto[1], lisbon[:5], porto[2:6]],  # wrong: alone at its place, half the city
                    lisbon, porto[::-1],  # right: the ten best agree, scores close together
                    np.r_[lisbon[:2], porto[:8]]])  # right: the best two agree and stand out
    scores = np.stack([np.r_[0.80, np.linspace(0.76, 0.70, 9)], np.r_[0.700, np.linspace(0.696, 0.69, 9)],
                       np.linspace(0.62, 0.60, 10), np.linspace(0.70, 0.69, 10), np.r_[0.9, 0.88, np.full(8, 0.7)]])
    predictions = predict_positions(ids, scores, database, ["wrong_a", "wrong_b", "right_a", "right_b", "right_c"])
    wrong, right = predictions[:2], predictions[2:]
    assert wrong[0].lat > 41 and (wrong[0].agreeing, wrong[0].agreeing_city) == (0, 0)
    assert max(p.confidence for p in wrong) < min(p.confidence for p in right)
    assert (right[0].agreeing, right[0].agreeing_city, right[0].confidence) == (9, 9, 1.0)
    far = database.distances_m(ids, ids[:, :1])[:, :5] > 25  # the old rival: within the top 5 shown
    old_gap = scores[:, 0] - np.where(far.any(1), np.where(far, scores[:, :5], -np.inf).max(1), scores[:, 4])
    assert old_gap[:2] == pytest.approx([0.04, 0.004]) and old_gap[0] > old_gap[2:4].max()  # what the gap said


def test_l2_confidence_is_the_cosine_one_and_scale_free():
    """Under the l2 metric (scores = minus Euclidean distances) the confidence sees cosine-scale
    scores: the same answer as cosine for unit descriptors, unchanged when descriptors are scaled."""
    database = _two_cities()
    rng = np.random.default_rng(1)
    db = rng.normal(size=(20, 16))
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    queries = db[[0, 12, 5]] + 0.3 * rng.normal(size=(3, 16))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cos = queries @ db.T
    ids = np.argsort(-cos, axis=1)
    by_cosine = predict_positions(ids, np.take_along_axis(cos, ids, 1), database, list("abc"))
    for scale in (1.0, 7.0):  # raw (unnormalized) descriptors of one overall scale
        dist = np.linalg.norm(scale * queries[:, None] - scale * db[None], axis=2)
        scores = -np.take_along_axis(dist, ids, 1)
        conf = cosine_scale_scores(scores, np.linalg.norm(scale * queries, axis=1))
        assert conf == pytest.approx(np.take_along_axis(cos, ids, 1))
        by_l2 = predict_positions(ids, scores, database, list("abc"), confidence_scores=conf)
        assert [p.confidence for p in by_l2] == pytest.approx([p.confidence for p in by_cosine])


def test_confidence_does_not_change_with_top_k():
    database = _two_cities()
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(20) for _ in range(6)])
    scores = -np.sort(-rng.uniform(0.2, 0.9, (6, 20)), axis=1)
    full = predict_positions(ids, scores, database, list("abcdef"))
    for top_k in (1, 3, 10, 20):
        shown = predict_positions(ids, scores, database, list("abcdef"), top_k=top_k)
        for p, f in zip(shown, full):
            assert (p.confidence, p.agreeing, p.agreeing_city, p.runner_ups) == (f.confidence, f.agreeing,
                                                                                 f.agreeing_city, f.runner_ups)
            assert p.matches == f.matches[:top_k]
    assert all(p.runner_ups == 9 for p in full)  # the 10 best, not the 20 searched
    with pytest.raises(ConfigError, match="top_k=0"):
        predict_positions(ids, scores, database, list("abcdef"), top_k=0)


def test_json_round_trip(tmp_path, predictions):
    write_predictions_json(predictions, tmp_path / "out.json")
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded["positive_dist_m"] == 25.0
    assert loaded["predictions"] == [json.loads(json.dumps(p.as_dict())) for p in predictions]
    assert loaded["predictions"][0]["matches"][1]["database_index"] == 1
    rows = prediction_rows(predictions)
    assert rows[0]["utm_zone"] == "10S" and rows[1]["best_match"] == "database/img_1.jpg"
    table = format_predictions_table(predictions)
    assert "photo_a.jpg" in table and f"{predictions[0].confidence:.2f}" in table and "2/3" in table
    assert len(table.splitlines()) == 3


def test_geojson_structure_and_lon_lat_order(tmp_path, predictions):
    write_geojson(predictions, tmp_path / "out.geojson")
    collection = json.loads((tmp_path / "out.geojson").read_text())
    json.dumps(collection, allow_nan=False)  # strict JSON: no NaN or infinity anywhere
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 2 + 4 + 3
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
        lon, lat = feature["geometry"]["coordinates"]
        assert -123 < lon < -122 and 37 < lat < 38  # San Francisco, [lon, lat] order
    first = collection["features"][0]
    assert first["properties"]["kind"] == "prediction" and first["properties"]["query"] == "photo_a.jpg"
    assert first["geometry"]["coordinates"] == [predictions[0].lon, predictions[0].lat]
    kinds = [f["properties"]["kind"] for f in collection["features"]]
    assert kinds.count("match") == 7
    assert len(predictions_to_geojson(predictions, include_matches=False)["features"]) == 2


def test_folium_map(tmp_path, predictions):
    write_map(predictions, tmp_path / "map.html")
    html = (tmp_path / "map.html").read_text()
    assert "leaflet" in html.lower() and "photo_a.jpg" in html and "photo_b.jpg" in html
    assert [p.name for p in tmp_path.iterdir()] == ["map.html"]
    with pytest.raises(ConfigError, match="no prediction"):
        write_map([], tmp_path / "empty.html")


def test_coordinates_from_latlon_and_across_zones():
    lat, lon = utm.to_latlon(EAST, NORTH, 10, "S")
    coords = DatabaseCoordinates.from_latlon(lat, lon)
    np.testing.assert_allclose(coords.east, EAST, atol=1e-3)
    np.testing.assert_allclose(coords.north, NORTH, atol=1e-3)
    assert coords.zone_letter.tolist() == ["S"] * 5
    # two images 17.6 m apart on either side of the zone 10 / 11 boundary (lon -120)
    pair = DatabaseCoordinates.from_latlon([37.0, 37.0], [-120.0001, -119.9999])
    assert pair.zone_number.tolist() == [10, 11]
    assert pair.distances_m(np.array([0]), np.array([1]))[0] == pytest.approx(haversine_m(37, -120.0001, 37, -119.9999)[()])
    assert pair.distances_m(np.array([0]), np.array([1]))[0] < 20
    numbers, letters = utm_zones(np.array([60.0, 78.0, -33.9]), np.array([5.0, 15.0, 151.2]))
    assert numbers.tolist() == [32, 33, 56] and letters.tolist() == ["V", "X", "H"]


def test_bad_inputs(database):
    with pytest.raises(ConfigError, match="2 queries x K"):
        predict_positions(np.zeros((2, 3), dtype=int), np.zeros((2, 2)), database, ["a", "b"])
    with pytest.raises(DatasetError, match="outside the database of 5 images"):
        predict_positions(np.array([[7]]), np.array([[0.5]]), database, ["a"])
    with pytest.raises(DatasetError, match="no match"):
        predict_positions(np.array([[-1]]), np.array([[-np.inf]]), database, ["a"])
    with pytest.raises(DatasetError, match="3 paths for 5 images"):
        DatabaseCoordinates.from_utm(EAST, NORTH, [10] * 5, ["S"] * 5, PATHS[:3])
    with pytest.raises(DatasetError, match="UTM's range"):
        DatabaseCoordinates.from_latlon([89.0], [0.0])


def test_accuracy_coverage_auc():
    right = np.array([1, 1, 0, 0], dtype=bool)
    coverage, accuracy = accuracy_coverage(np.array([0.9, 0.8, 0.2, 0.1]), right)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0] and accuracy.tolist() == pytest.approx([1, 1, 2 / 3, 0.5])
    assert accuracy_coverage_auc(np.array([0.9, 0.8, 0.2, 0.1]), right) == pytest.approx(100 * (1 + 1 + 2 / 3 + 0.5) / 4)
    assert accuracy_coverage_auc(np.array([0.1, 0.2, 0.8, 0.9]), right) == pytest.approx(100 * (0 + 0 + 1 / 3 + 0.5) / 4)
    # equal confidences rank at random: the accuracy at every coverage is the overall one
    assert accuracy_coverage_auc(np.zeros(4), right) == pytest.approx(50.0)
    assert accuracy_coverage_auc(np.zeros(4), right[::-1]) == pytest.approx(50.0)
    with pytest.raises(ConfigError, match="one length"):
        accuracy_coverage(np.zeros(3), right)


def test_localize_help_documents_every_output_column(capsys):
    from dataclasses import fields

    from progeo.cli import build_parser
    from progeo.eval.localize_core import Match, PhotoPrediction

    with pytest.raises(SystemExit):
        build_parser().parse_args(["localize", "--help"])
    text = capsys.readouterr().out
    epilog = text[text.index("output columns"):]
    table_header = format_predictions_table(predict_positions(np.array([[0]]), np.array([[0.5]]), _two_cities(), ["a"]))
    names = {f.name for f in fields(PhotoPrediction)} | {f.name for f in fields(Match)} | set(table_header.split()[:8])
    missing = [n for n in sorted(names) if n not in epilog]  # the printed table's columns and the JSON fields
    assert not missing, f"undocumented localize outputs: {missing}"
