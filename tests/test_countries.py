"""Country identity: names, ISO codes and aliases of one country match in places, labels, classes and metrics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from progeo.errors import ConfigError, DatasetError
from progeo.geo import Place, PlaceList, country_code, country_key, country_name, read_labelled_images, read_places_csv
from progeo.geo.countries import suggest_countries
from progeo.geo.metrics import country_confusion
from progeo.geo.places import world_cities
from progeo.geo.probe import probe_classes
from progeo.geo.report import ClassTable, Predictions, gem_metrics, true_classes
from progeo.geo.templates import default_templates, render_texts

PLACES = """name,country,lat,lon
New York,{us},40.71,-74.01
Chicago,{us},41.88,-87.63
Paris,{fr},48.86,2.35
Lyon,{fr},45.76,4.84
London,{gb},51.51,-0.13
"""

LABELS = """path,lat,lon,city,country
a.png,40.70,-74.00,New York,{us}
b.png,41.80,-87.60,Chicago,{us}
c.png,48.80,2.30,Paris,{fr}
d.png,45.70,4.80,Lyon,{fr}
e.png,51.50,-0.10,London,{gb}
f.png,40.75,-73.90,new york,{us}
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _places(tmp_path: Path, us="United States", fr="France", gb="United Kingdom", name="places.csv") -> PlaceList:
    return read_places_csv(_write(tmp_path / name, PLACES.format(us=us, fr=fr, gb=gb)))


def _labels(tmp_path: Path, us="United States", fr="France", gb="United Kingdom", name="labels.csv"):
    return read_labelled_images(_write(tmp_path / name, LABELS.format(us=us, fr=fr, gb=gb)), check_files=False)


def test_names_codes_and_aliases_resolve_to_one_country():
    for text in ("United States", "united states", "USA", "usa", "US", "U.S.A.", "United States of America"):
        assert country_code(text) == "US" and country_name(text) == "United States"
    for text in ("United Kingdom", "UK", "Great Britain", "GB", "GBR"):
        assert country_code(text) == "GB"
    pairs = {"Czech Republic": "CZ", "Czechia": "CZ", "Korea Republic": "KR", "South Korea": "KR",
             "Russian Federation": "RU", "The Netherlands": "NL", "Netherlands": "NL", "Türkiye": "TR",
             "turkiye": "TR", "Viet Nam": "VN", "FRA": "FR", "deu": "DE", "jp": "JP", "Côte d'Ivoire": "CI"}
    assert {t: country_code(t) for t in pairs} == pairs
    assert country_name("The Netherlands") == "Netherlands" and country_name("Türkiye") == "Turkey"
    assert country_key("usa") == country_key("United States") == "US"
    # no known country: kept as written, compared by its name (case and accents ignored)
    assert country_code("Atlantis") is None and country_name(" Atlantis ") == "Atlantis"
    assert country_key("atlantis") == country_key("ATLANTIS") != country_key("Atlantia")
    assert country_code("England") is None  # a part of GB, not merged silently...
    assert suggest_countries("England")[0] == "United Kingdom"  # ...but suggested
    assert suggest_countries("Frnace") == ["France"]


def test_places_csv_keeps_one_display_name_per_country(tmp_path, caplog):
    places = _places(tmp_path, us="USA", fr="FRA", gb="UK")
    assert places.country_names() == ["France", "United Kingdom", "United States"]
    assert places[0].country == "United States" and places[0].country_code == "US"
    assert places.find("Paris", "fr") == [2] and places.find("Paris", "Germany") == []
    mixed = _write(tmp_path / "mixed.csv", "name,country,lat,lon\nA,USA,1,1\nB,United States,2,2\nC,us,3,3\n")
    assert read_places_csv(mixed).country_names() == ["United States"]
    dup = _write(tmp_path / "dup.csv", "name,country,lat,lon\nParis,France,48.8,2.3\nParis,FR,48.9,2.4\n")
    with pytest.raises(DatasetError, match=r"line 3: duplicate place .*first on line 2"):
        read_places_csv(dup)
    # prompts use the natural name, not the code or alias of the file
    assert render_texts(default_templates("city")[:1], [places[0]], "city") == [
        ["a street view photo taken in New York, United States."]]
    with caplog.at_level(logging.WARNING, logger="progeo.geo.places"):
        read_places_csv(_write(tmp_path / "typo.csv", "name,country,lat,lon\nParis,Frnace,48.8,2.3\n"))
    assert "line 2: country 'Frnace' is no known country" in caplog.text and "did you mean 'France'" in caplog.text


def _fixed_predictions(classes: ClassTable, n: int) -> Predictions:
    rng = np.random.default_rng(3)
    top = np.stack([rng.permutation(len(classes)) for _ in range(n)])
    return Predictions(classes, [f"{i}.png" for i in range(n)], top, np.zeros(top.shape, np.float32),
                       classes.lat[top[:, 0]], classes.lon[top[:, 0]])


@pytest.mark.parametrize("level", ["city", "country"])
def test_alias_and_code_spellings_give_identical_metrics(tmp_path, level):
    places = _places(tmp_path)
    consistent = _labels(tmp_path)
    classes = ClassTable.from_places(places, level)
    pred = _fixed_predictions(classes, len(consistent))
    reference = gem_metrics(pred, *_truth(consistent, classes, places))
    spellings = [dict(us="USA", fr="FRA", gb="UK"), dict(us="us", fr="fr", gb="GBR"),
                 dict(us="United States of America", fr="france", gb="Great Britain")]
    for i, names in enumerate(spellings):
        labels = _labels(tmp_path, name=f"labels{i}.csv", **names)
        assert labels.countries == consistent.countries  # stored under the display name
        assert gem_metrics(pred, *_truth(labels, classes, places)) == reference
        # the places spelled differently, the labels as in the gazetteer: the same classes and metrics
        other = _places(tmp_path, name=f"places{i}.csv", **names)
        other_classes = ClassTable.from_places(other, level)
        assert other_classes.names == classes.names and other_classes.countries == classes.countries
        assert gem_metrics(pred, *_truth(consistent, other_classes, other)) == reference


def _truth(labels, classes, places):
    targets, countries = true_classes(labels, classes, places)
    return targets, labels.lat, labels.lon, countries


def test_labels_read_against_places_match_any_spelling(tmp_path):
    places = _places(tmp_path, us="USA")
    path = _write(tmp_path / "l.csv", LABELS.format(us="United States of America", fr="FRA", gb="uk"))
    labels = read_labelled_images(path, places=places, check_files=False)
    assert labels.place_index.tolist() == [0, 1, 2, 3, 4, 0]
    assert labels.countries[:5] == ["United States", "United States", "France", "France", "United Kingdom"]


def test_unknown_label_country_names_file_line_value_and_suggestion(tmp_path):
    places = _places(tmp_path)
    path = _write(tmp_path / "typo.csv", LABELS.format(us="United States", fr="Frnace", gb="UK"))
    with pytest.raises(DatasetError) as info:
        read_labelled_images(path, places=places, check_files=False)
    msg = str(info.value)
    assert str(path) in msg and "line 4: city 'Paris' is a candidate in France, not in 'Frnace'" in msg
    assert "country 'Frnace' is not a known country" in msg and "did you mean 'France'?" in msg
    # without places at reading time: the country-level ground truth reports it with the lines
    labels = read_labelled_images(path, check_files=False)
    with pytest.raises(DatasetError) as info:
        true_classes(labels, ClassTable.from_places(places, "country"))
    msg = str(info.value)
    assert str(path) in msg and "'Frnace'" in msg and "line 4, 5: country 'Frnace' is not a known country" in msg
    assert "did you mean 'France'?" in msg
    # a known country without candidates is told apart from a misspelt one
    with pytest.raises(DatasetError, match=r"country 'DE' \(Germany\) has no candidate place"):
        ClassTable.from_places(places, "country").country_index(["DE"], "labels.csv", [2])


def test_custom_countries_consistent_in_both_files_still_match(tmp_path, caplog):
    places = _places(tmp_path, us="Atlantis", gb="Lilliput")
    assert places.country_names() == ["Atlantis", "France", "Lilliput"]
    labels = _labels(tmp_path, us="atlantis", gb="Lilliput")  # case differs: still the same name
    for level in ("city", "country"):
        classes = ClassTable.from_places(places, level)
        with caplog.at_level(logging.WARNING, logger="progeo.geo.countries"):
            targets, countries = true_classes(labels, classes, places)
        assert countries == ["Atlantis", "Atlantis", "France", "France", "Lilliput", "Atlantis"]
    assert "compared with" in caplog.text and "'Atlantis'" in caplog.text
    with pytest.raises(DatasetError, match=r"country 'Atlantia' is not a known country .*did you mean 'Atlantis'"):
        true_classes(_labels(tmp_path, us="Atlantia", gb="Lilliput", name="l2.csv"),
                     ClassTable.from_places(places, "country"))


def test_confusion_and_probe_classes_merge_spellings():
    conf = country_confusion(["USA", "United States", "FRA", "Atlantis"], ["US", "France", "France", "atlantis"])
    assert conf.countries == ["Atlantis", "France", "United States"]
    assert conf.counts.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    from progeo.geo.labelled_images import LabelledImages

    labels = LabelledImages([f"{i}.png" for i in range(4)], np.array([40.7, 40.8, 48.8, 41.8]),
                            np.array([-74.0, -74.1, 2.3, -87.6]), ["New York", "new york", "Paris", "Chicago"],
                            ["USA", "United States", "fr", "US"], "synthetic", Path("train.csv"))
    cities, y = probe_classes(labels, "city")
    assert cities.names == ["Paris", "Chicago", "New York"] and y.tolist() == [2, 2, 0, 1]
    assert cities.countries == ["France", "United States", "United States"]
    countries, yc = probe_classes(labels, "country")
    assert countries.names == ["France", "United States"] and yc.tolist() == [1, 1, 0, 1]


def test_world_cities_country_filter_accepts_codes_and_aliases():
    usa = world_cities(min_population=1_000_000, countries=["USA"])
    assert usa.country_names() == ["United States"] and all(p.country_code == "US" for p in usa)
    both = world_cities(min_population=1_000_000, countries=["fra", "United States of America"])
    assert both.country_names() == ["France", "United States"]
    with pytest.raises(ConfigError, match=r"Frnace \(did you mean 'France'\?\)"):
        world_cities(min_population=1_000_000, countries=["Frnace"])


def test_synthetic_world_countries_are_unchanged():
    world = PlaceList([Place("Lisbon", "Portugal", 38.7, -9.1), Place("Oslo", "Norway", 59.9, 10.7),
                       Place("Kyoto", "Japan", 35.0, 135.8), Place("Marrakesh", "Morocco", 31.6, -8.0)])
    assert world.countries == ["Portugal", "Norway", "Japan", "Morocco"]
    assert [p.country_code for p in world] == ["PT", "NO", "JP", "MA"]
