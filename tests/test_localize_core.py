import json

import numpy as np
import pytest
import utm

from progeo.errors import ConfigError, DatasetError
from progeo.eval.localize_core import (
    DatabaseCoordinates,
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
    assert a.confidence == pytest.approx(0.9 - 0.8)  # the rival: id 2, 300 m from the best
    assert a.rival_in_top_k and a.agreeing == 3  # ids 0, 1 (10 m) and 4 (20 m)
    assert [m.distance_to_best_m for m in a.matches] == pytest.approx([0, 10, 300, 20])
    assert [m.rank for m in a.matches] == [1, 2, 3, 4] and a.matches[2].path == "database/img_2.jpg"
    # b: every match within 25 m of the best (id 1): the gap to the last score is a lower bound
    assert b.lat == pytest.approx(utm.to_latlon(EAST[1], NORTH[1], 10, "S")[0])
    assert not b.rival_in_top_k and b.confidence == pytest.approx(0.7 - 0.6) and b.agreeing == 3
    assert len(b.matches) == 3 and b.matches[2].distance_to_best_m == pytest.approx(np.hypot(10, 20))


def test_json_round_trip(tmp_path, predictions):
    write_predictions_json(predictions, tmp_path / "out.json")
    loaded = json.loads((tmp_path / "out.json").read_text())
    assert loaded["positive_dist_m"] == 25.0
    assert loaded["predictions"] == [json.loads(json.dumps(p.as_dict())) for p in predictions]
    assert loaded["predictions"][0]["matches"][1]["database_index"] == 1
    rows = prediction_rows(predictions)
    assert rows[0]["utm_zone"] == "10S" and rows[1]["best_match"] == "database/img_1.jpg"
    table = format_predictions_table(predictions)
    assert "photo_a.jpg" in table and "0.100" in table and len(table.splitlines()) == 3


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
