"""Candidate places, the built-in gazetteer and labelled image lists (every flavour, every error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from progeo.errors import ConfigError, DatasetError
from progeo.geo import (
    Place,
    PlaceList,
    country_labels,
    detect_flavour,
    haversine_km,
    match_places,
    nearest_places,
    place_key,
    read_labelled_images,
    read_places_csv,
    world_cities,
)

PLACES_CSV = """Name,Country,LAT,Lon,population,notes
Paris,France,48.8566,2.3522,2100000,capital
Lyon,France,45.7640,4.8357,,
São Paulo,Brazil,-23.5505,-46.6333,12300000,
Portland,United States,45.5152,-122.6784,650000,
Portland,Australia,-38.3430,141.6050,10000,
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def places(tmp_path):
    return read_places_csv(_write(tmp_path / "places.csv", PLACES_CSV))


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")


# ------------------------------------------------------------------ candidate places CSV
def test_read_places_csv(places):
    assert len(places) == 5
    assert places.names[:3] == ["Paris", "Lyon", "São Paulo"]
    assert places[0].population == 2100000 and places[1].population == 0
    np.testing.assert_allclose(places.lats[:2], [48.8566, 45.7640])
    assert places.country_names() == ["Australia", "Brazil", "France", "United States"]
    assert places.find("sao_PAULO") == [2]  # case, accents and underscores are forgiven
    assert sorted(places.find("portland")) == [3, 4]
    assert places.find("Portland", "australia") == [4]
    assert places.suggest("Pariss") == ["Paris"]
    assert place_key("  Rio  De_Janeiro ") == "rio de janeiro"


@pytest.mark.parametrize("text, match", [
    ("name,country,lat\nParis,France,48.8\n", r"line 1 \(header\): missing column 'lon'"),
    ("name,country,lat,lon\nParis,France,abc,2.3\n", r"line 2, column 'lat': 'abc' is not a number"),
    ("name,country,lat,lon\nParis,France,48.8,2.3\nX,Y,95,2\n", r"line 3, column 'lat': 95.0 is outside \[-90, 90\]"),
    ("name,country,lat,lon\nParis,France,48.8,200\n", r"line 2, column 'lon': 200.0 is outside \[-180, 180\]"),
    ("name,country,lat,lon\nParis,France,48.8,2.3\nparis,FRANCE,48.9,2.4\n", r"line 3: duplicate place .*first on line 2"),
    ("name,country,lat,lon\nParis,,48.8,2.3\n", r"line 2, column 'country': empty value"),
    ("name,country,lat,lon\nParis,France,,2.3\n", r"line 2, column 'lat': empty value"),
    ("name,country,lat,lon\nParis,France,48.8\n", r"line 2: 3 fields but the header has 4"),
    ("name,country,lat,lon\n", r"no data rows"),
    ("", r"the file is empty"),
])
def test_read_places_csv_errors_name_file_line_and_column(tmp_path, text, match):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DatasetError, match=match) as info:
        read_places_csv(path)
    assert str(path) in str(info.value)


def test_read_places_csv_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_places_csv(tmp_path / "nope.csv")


def test_read_places_csv_aliases_and_bom(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("\ufeffCity,Country_Name,Latitude,Longitude\nRome,Italy,41.9,12.5\n", encoding="utf-8")
    (rome,) = read_places_csv(path).places
    assert (rome.name, rome.country, rome.lat, rome.lon) == ("Rome", "Italy", 41.9, 12.5)


# ------------------------------------------------------------------ built-in gazetteer (offline)
def test_world_cities_filter_by_population():
    big = world_cities(min_population=5_000_000)
    bigger = world_cities(min_population=10_000_000)
    assert 0 < len(bigger) < len(big)
    assert all(p.population >= 5_000_000 for p in big)
    assert [p.population for p in big] == sorted((p.population for p in big), reverse=True)
    names = {(p.name, p.country) for p in big}
    assert ("Tokyo", "Japan") in names and ("London", "United Kingdom") in names
    paris = world_cities(min_population=1_000_000, countries=["FR"]).places
    assert {p.country for p in paris} == {"France"} and "Paris" in {p.name for p in paris}
    assert abs(paris[0].lat - 48.85) < 0.1
    by_name = world_cities(min_population=1_000_000, countries=["france"])
    assert by_name.names == [p.name for p in paris]
    assert len(world_cities(min_population=1_000_000, max_cities=7)) == 7
    keys = [(place_key(p.name), p.country) for p in world_cities(min_population=100_000)]
    assert len(keys) == len(set(keys))  # (name, country) pairs are unique


def test_world_cities_bad_arguments():
    with pytest.raises(ConfigError, match="Atlantis"):
        world_cities(min_population=1_000_000, countries=["Atlantis"])
    with pytest.raises(ConfigError, match=">= 0"):
        world_cities(min_population=-1)
    with pytest.raises(ConfigError, match="no city"):
        world_cities(min_population=10**9)


def test_nearest_places(places):
    index, dist = nearest_places([48.85, -23.5, 45.6], [2.35, -46.6, -122.7], places)
    assert index.tolist() == [0, 2, 3]
    assert dist[0] < 1.0 and dist.max() < 20.0


def test_nearest_places_matches_brute_force():
    rng = np.random.default_rng(1)
    cands = PlaceList([Place(f"c{i}", "X", float(a), float(b))
                       for i, (a, b) in enumerate(zip(rng.uniform(-90, 90, 60), rng.uniform(-180, 180, 60)))])
    lat, lon = rng.uniform(-90, 90, 200), rng.uniform(-180, 180, 200)
    brute = haversine_km(lat[:, None], lon[:, None], cands.lats[None], cands.lons[None])
    index, dist = nearest_places(lat, lon, cands, chunk=64)
    np.testing.assert_allclose(dist, brute.min(axis=1), rtol=1e-9)
    assert (brute[np.arange(200), index] == brute.min(axis=1)).all()


# ------------------------------------------------------------------ labelled images
def test_im2gps3k_flavour(tmp_path):
    images = tmp_path / "im2gps3k"
    _touch(images, "1_a@N00.jpg", "2_b.jpg")
    csv = _write(tmp_path / "im2gps3k_places365.csv",
                 "IMG_ID,AUTHOR,LAT,LON,S3_Label\n1_a@N00.jpg,x,48.85,2.35,1\n2_b,y,-23.5,-46.6,0\n")
    labels = read_labelled_images(csv, images_dir=images)
    assert labels.flavour == "im2gps3k" and len(labels) == 2
    assert labels.paths == [images / "1_a@N00.jpg", images / "2_b.jpg"]  # extension found for '2_b'
    assert all(p.is_absolute() for p in labels.paths)
    np.testing.assert_allclose(labels.lat, [48.85, -23.5])
    assert labels.cities == ["", ""] and labels.place_index is None


def test_placepulse_flavour_with_places(tmp_path, places):
    _touch(tmp_path / "imgs", "a.jpg", "b.jpg", "c.jpg")
    csv = _write(tmp_path / "pp.csv",
                 "image,lat,lon,city\nimgs/a.jpg,48.86,2.34,Paris\nimgs/b.jpg,45.76,4.83,lyon\nimgs/c.jpg,-23.5,-46.6,Sao Paulo\n")
    labels = read_labelled_images(csv, places=places)  # relative to the CSV's folder
    assert labels.flavour == "placepulse"
    assert labels.paths[0] == tmp_path / "imgs" / "a.jpg"
    assert labels.place_index.tolist() == [0, 1, 2]
    assert labels.countries == ["France", "France", "Brazil"]  # filled from the candidate list
    assert country_labels(labels, places) == ["France", "France", "Brazil"]


def test_synthetic_flavour_and_override(tmp_path, places):
    _touch(tmp_path, "x.png")
    csv = _write(tmp_path / "labels.csv", "path,lat,lon,city,country\nx.png,45.5,-122.6,Portland,United States\n")
    labels = read_labelled_images(csv, places=places)
    assert labels.flavour == "synthetic" and labels.place_index.tolist() == [3]
    forced = read_labelled_images(csv, flavour="im2gps3k")
    assert forced.flavour == "im2gps3k" and forced.cities == ["Portland"]
    with pytest.raises(DatasetError, match="unknown labels flavour"):
        read_labelled_images(csv, flavour="yfcc")


def test_detect_flavour():
    assert detect_flavour(["img_id", "author", "lat", "lon"]) == "im2gps3k"
    assert detect_flavour(["image", "lat", "long", "city"]) == "placepulse"
    assert detect_flavour(["path", "lat", "lon", "city", "country"]) == "synthetic"
    assert detect_flavour(["filename", "latitude", "longitude"]) == "im2gps3k"
    assert detect_flavour(["image", "score"]) is None


def test_labelled_images_header_errors(tmp_path):
    csv = _write(tmp_path / "l.csv", "image,score\na.jpg,1\n")
    with pytest.raises(DatasetError, match=r"line 1 \(header\): cannot tell the CSV flavour"):
        read_labelled_images(csv, check_files=False)
    csv = _write(tmp_path / "l2.csv", "image,lat,lon\na.jpg,1,2\n")
    with pytest.raises(DatasetError, match="placepulse flavour needs a 'city' column"):
        read_labelled_images(csv, flavour="placepulse", check_files=False)


def test_labelled_images_missing_and_bad_labels_listed(tmp_path):
    csv = _write(tmp_path / "pp.csv",
                 "image,lat,lon,city\na.jpg,48.8,2.3,\nb.jpg,,2.3,Paris\nc.jpg,48.8,east,Paris\nd.jpg,48.8,2.3,Paris\n")
    with pytest.raises(DatasetError) as info:
        read_labelled_images(csv, check_files=False)
    msg = str(info.value)
    assert "3 row(s) with missing or invalid labels" in msg
    assert "line 2: empty city" in msg and "line 3: empty lat" in msg
    assert "line 4, column 'lon': 'east' is not a number" in msg


def test_labelled_images_unknown_and_ambiguous_places(tmp_path, places):
    csv = _write(tmp_path / "pp.csv",
                 "image,lat,lon,city\na.jpg,48.8,2.3,Pariss\nb.jpg,48.8,2.3,Pariss\nc.jpg,45.5,-122.6,Portland\n")
    with pytest.raises(DatasetError) as info:
        read_labelled_images(csv, places=places, check_files=False)
    msg = str(info.value)
    assert "3 row(s) name places that are not candidates" in msg
    assert "line 2, 3: city 'Pariss' is not a candidate place (did you mean 'Paris'?)" in msg
    assert "line 4: city 'Portland' is ambiguous (Australia, United States); add a country column" in msg
    assert "add them to the places CSV" in msg
    with pytest.raises(DatasetError, match="candidate in France, not in 'Frankreich'"):
        match_places(["Paris"], ["Frankreich"], places)


def test_labelled_images_missing_files_listed(tmp_path):
    images = tmp_path / "images"
    _touch(images, "img0.jpg")
    rows = "".join(f"img{i}.jpg,1,2\n" for i in range(9))
    csv = _write(tmp_path / "l.csv", "IMG_ID,LAT,LON\n" + rows)
    with pytest.raises(DatasetError) as info:
        read_labelled_images(csv, images_dir=images)
    msg = str(info.value)
    assert "8 of 9 listed images are missing under" in msg and str(images) in msg
    assert "img1.jpg; img2.jpg" in msg and "(and 3 more)" in msg
    with pytest.raises(DatasetError, match="does not exist"):
        read_labelled_images(csv, images_dir=tmp_path / "nope")
    assert len(read_labelled_images(csv, images_dir=images, check_files=False)) == 9


def test_country_labels_need_cities(tmp_path, places):
    csv = _write(tmp_path / "l.csv", "IMG_ID,LAT,LON\na.jpg,1,2\n")
    labels = read_labelled_images(csv, check_files=False, places=places)
    with pytest.raises(DatasetError, match="no city labels"):
        country_labels(labels, places)
    pp = _write(tmp_path / "pp.csv", "image,lat,lon,city\na.jpg,1,2,São Paulo\n")
    assert country_labels(read_labelled_images(pp, check_files=False), places) == ["Brazil"]
