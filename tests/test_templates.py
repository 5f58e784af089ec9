"""GEM prompt templates: defaults, custom template files and rendering."""

from __future__ import annotations

import pytest

from progeo.errors import ConfigError
from progeo.geo.places import Place
from progeo.geo.templates import (
    CITY_TEMPLATES,
    COUNTRY_TEMPLATES,
    default_templates,
    load_templates,
    render_texts,
    template_problem,
    validate_templates,
)

PARIS = Place("Paris", "France", 48.8566, 2.3522)
KYOTO = Place("Kyoto", "Japan", 35.0116, 135.7681)


def test_defaults_are_valid_and_geo_contextualised():
    assert 6 <= len(CITY_TEMPLATES) <= 10 and 4 <= len(COUNTRY_TEMPLATES) <= 10
    assert CITY_TEMPLATES[0] == "a street view photo taken in {city}, {country}."
    assert all("{city}" in t and "{country}" in t for t in CITY_TEMPLATES)
    assert all("{country}" in t and "{city}" not in t for t in COUNTRY_TEMPLATES)
    assert validate_templates(CITY_TEMPLATES, "city") == CITY_TEMPLATES
    assert default_templates("country") == COUNTRY_TEMPLATES
    with pytest.raises(ConfigError, match="unknown classification level 'region'"):
        default_templates("region")


def test_render_texts_per_place():
    texts = render_texts(CITY_TEMPLATES[:2], [PARIS, KYOTO], "city")
    assert texts == [
        ["a street view photo taken in Paris, France.", "a photo of a street in Paris, France."],
        ["a street view photo taken in Kyoto, Japan.", "a photo of a street in Kyoto, Japan."],
    ]
    countries = render_texts(COUNTRY_TEMPLATES[:1], ["France", KYOTO], "country")
    assert countries == [["a street view photo taken in France."], ["a street view photo taken in Japan."]]
    with pytest.raises(TypeError):
        render_texts(CITY_TEMPLATES, ["Paris"], "city")
    with pytest.raises(ConfigError, match="unknown placeholder '{city}'"):
        render_texts(CITY_TEMPLATES, ["France"], "country")


def test_load_templates_skips_comments_and_blanks(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# my templates\n\n  a photo from {city} in {country}.  \n{city}, {{not a field}}\n", encoding="utf-8")
    templates = load_templates(path, "city")
    assert templates == ("a photo from {city} in {country}.", "{city}, {{not a field}}")
    assert render_texts(templates, [PARIS], "city") == [["a photo from Paris in France.", "Paris, {not a field}"]]


@pytest.mark.parametrize("line, level, match", [
    ("a photo of {town}, {country}.", "city", r"line 3: unknown placeholder '\{town\}'"),
    ("a photo of {city}.", "country", r"line 3: unknown placeholder '\{city\}'; country-level"),
    ("a photo taken in {country}.", "city", r"line 3: no '\{city\}' placeholder"),
    ("a photo of {}.", "city", r"line 3: positional placeholder"),
    ("a photo of {0}.", "country", r"line 3: positional placeholder"),
    ("a photo of {city:>10}.", "city", r"line 3: placeholder '\{city\}' has a format spec"),
    ("a photo of {city!r}.", "city", r"line 3: placeholder '\{city\}' has a format spec or conversion"),
    ("a photo of {city.", "city", r"line 3: malformed braces"),
    ("a photo of city}.", "city", r"line 3: malformed braces"),
])
def test_load_templates_errors_name_the_line(tmp_path, line, level, match):
    path = tmp_path / "t.txt"
    good = "a street photo of {city}, {country}." if level == "city" else "a street photo of {country}."
    path.write_text(f"# header\n{good}\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=match) as info:
        load_templates(path, level)
    assert str(path) in str(info.value)


def test_load_templates_empty_or_missing_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no templates"):
        load_templates(empty, "city")
    with pytest.raises(ConfigError, match="not found"):
        load_templates(tmp_path / "missing.txt", "city")
    with pytest.raises(ConfigError, match="no templates"):
        validate_templates([], "country")
    assert template_problem("{country} streets", "country") == ""
