"""Labelled image lists for GEM evaluation and linear probing.

Three CSV flavours, told apart by their header (or forced with ``flavour=``); header names are
case-insensitive and extra columns are ignored:

- ``im2gps3k``: ``IMG_ID, LAT, LON`` (the GeoEstimation ``im2gps3k_places365.csv`` layout;
  ``AUTHOR`` and scene columns are ignored). Detected by an ``img_id`` column, or by an image
  column with coordinates and no ``city``.
- ``placepulse``: ``image, lat, lon, city`` (``country`` optional).
- ``synthetic``: the synthetic world's ``labels.csv``: ``path, lat, lon, city, country``.

Accepted aliases: image ``path/image/img_id/image_id/img/image_path/img_path/filename/file``;
``latitude``; ``lng/long/longitude``. Relative image paths are resolved against ``images_dir``
or else the CSV's folder; a name without extension also matches ``.jpg/.jpeg/.png`` files.
Countries may be any spelling of a country (``USA``, ``US``, ``United States``; see
:mod:`progeo.geo.countries`); they are stored under their display name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from progeo.errors import DatasetError
from progeo.geo.countries import CountryMatcher, country_code, country_name, suggest_countries, warn_custom_countries
from progeo.geo.csv_rows import check_coord, find_column, read_rows
from progeo.geo.places import PlaceList, nearest_places

log = logging.getLogger(__name__)

FLAVOURS = ("im2gps3k", "placepulse", "synthetic")
_IMAGE = ("path", "image", "img_id", "image_id", "img", "image_path", "img_path", "filename", "file")
_LAT, _LON = ("lat", "latitude"), ("lon", "lng", "long", "longitude")
_CITY, _COUNTRY = ("city", "city_name"), ("country", "country_name")
_REQUIRED = {"im2gps3k": ("image", "lat", "lon"), "placepulse": ("image", "lat", "lon", "city"),
             "synthetic": ("image", "lat", "lon", "city", "country")}
_GUESS_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_MAX_LISTED = 5


@dataclass
class LabelledImages:
    """Images with their true coordinates and (possibly empty) city and country labels."""

    paths: list[Path]
    lat: np.ndarray
    lon: np.ndarray
    cities: list[str]
    countries: list[str]
    flavour: str
    source: Path
    place_index: np.ndarray | None = None  # index of each image's city in the candidate PlaceList
    lines: list[int] | None = None  # line of each image in ``source`` (for error messages)

    def __len__(self) -> int:
        return len(self.paths)


def detect_flavour(header: Sequence[str]) -> str | None:
    """Flavour implied by a (lower-cased) header, or None when no flavour fits."""
    has = lambda aliases: find_column(header, aliases) is not None  # noqa: E731
    if "img_id" in header:
        return "im2gps3k"
    if not (has(_IMAGE) and has(_LAT) and has(_LON)):
        return None
    if "path" in header and has(_CITY) and has(_COUNTRY):
        return "synthetic"
    return "placepulse" if has(_CITY) else "im2gps3k"


def _listed(items: Sequence[str], total: int) -> str:
    more = f" (and {total - len(items)} more)" if total > len(items) else ""
    return "; ".join(items) + more


def _resolve_images(names: list[str], base: Path, check_files: bool, source: Path) -> list[Path]:
    root = os.path.abspath(base)
    paths = [os.path.normpath(os.path.join(root, n)) for n in names]  # an absolute name stays as it is
    if check_files:
        listing: dict[str, set[str]] = {}  # one directory listing per folder, not one stat per image
        missing = []
        for i, p in enumerate(paths):
            folder, name = os.path.split(p)
            if folder not in listing:
                listing[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
            if name in listing[folder]:
                continue
            has_suffix = bool(os.path.splitext(name)[1])
            guess = next((x for x in _GUESS_SUFFIXES if not has_suffix and name + x in listing[folder]), None)
            if guess:
                paths[i] = p + guess
            else:
                missing.append(names[i])
        if missing:
            raise DatasetError(
                f"{source}: {len(missing)} of {len(paths)} listed images are missing under {base}: "
                f"{_listed(missing[:_MAX_LISTED], len(missing))}; pass the folder that holds them as the images folder"
            )
    return [Path(p) for p in paths]


def read_labelled_images(
    csv_path: str | os.PathLike,
    images_dir: str | os.PathLike | None = None,
    flavour: str | None = None,
    places: PlaceList | None = None,
    check_files: bool = True,
) -> LabelledImages:
    """Read a labelled image list; with ``places``, every city label must be a candidate place.

    Raises :class:`DatasetError` naming the rows with missing labels, unknown or ambiguous
    cities (with 'did you mean' suggestions), and the missing image files.
    """
    source = Path(csv_path)
    header, rows = read_rows(source)
    if flavour is None:
        flavour = detect_flavour(header)
        if flavour is None:
            raise DatasetError(
                f"{source}, line 1 (header): cannot tell the CSV flavour from columns {', '.join(header)}; "
                f"expected IMG_ID,LAT,LON (im2gps3k), image,lat,lon,city (placepulse) or "
                f"path,lat,lon,city,country (synthetic)"
            )
    elif flavour not in FLAVOURS:
        raise DatasetError(f"unknown labels flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    image_aliases = ("img_id", *_IMAGE) if flavour == "im2gps3k" else _IMAGE
    aliases = {"image": image_aliases, "lat": _LAT, "lon": _LON, "city": _CITY, "country": _COUNTRY}
    cols = {k: find_column(header, a) for k, a in aliases.items()}
    for need in _REQUIRED[flavour]:
        if cols[need] is None:
            raise DatasetError(
                f"{source}, line 1 (header): the {flavour} flavour needs a '{need}' column "
                f"(found: {', '.join(header)}); add it or pick another flavour"
            )
    names, lats, lons, cities, countries, lines, problems = [], [], [], [], [], [], []
    for line, fields in rows:
        get = lambda k: fields[cols[k]] if cols[k] is not None else ""  # noqa: E731
        empty = [k for k in _REQUIRED[flavour] if not get(k)]
        if empty:
            problems.append(f"line {line}: empty {' and '.join(empty)}")
            continue
        lat, bad_lat = check_coord(header[cols["lat"]], get("lat"), 90.0)
        lon, bad_lon = check_coord(header[cols["lon"]], get("lon"), 180.0)
        if bad_lat or bad_lon:
            problems.append(f"line {line}, {bad_lat or bad_lon}")
            continue
        names.append(get("image"))
        lats.append(lat)
        lons.append(lon)
        cities.append(get("city"))
        countries.append(country_name(get("country")) if get("country") else "")
        lines.append(line)
    if problems:
        raise DatasetError(
            f"{source}: {len(problems)} row(s) with missing or invalid labels: "
            f"{_listed(problems[:_MAX_LISTED], len(problems))}; fix or remove these rows"
        )
    base = Path(images_dir) if images_dir is not None else source.parent
    if images_dir is not None and not base.is_dir():
        raise DatasetError(f"images folder {base} does not exist; check the path")
    labels = LabelledImages(
        paths=_resolve_images(names, base, check_files, source), lat=np.array(lats), lon=np.array(lons),
        cities=cities, countries=countries, flavour=flavour, source=source, lines=lines,
    )
    if places is not None and cols["city"] is not None:
        labels.place_index = match_places(cities, countries, places, source, lines)
        labels.countries = [places[i].country for i in labels.place_index]
    log.info("read %d labelled images (%s) from %s", len(labels), flavour, source)
    return labels


def match_places(
    cities: Sequence[str],
    countries: Sequence[str],
    places: PlaceList,
    source: str | os.PathLike = "labels",
    line_numbers: Sequence[int] | None = None,
) -> np.ndarray:
    """Index in ``places`` of each (city, country) label; an empty country matches any country.

    Countries match by identity (``USA`` = ``United States``); a label country that is neither a
    known country nor one of the places' countries is reported with 'did you mean' suggestions.
    """
    lines = list(line_numbers) if line_numbers is not None else [i + 2 for i in range(len(cities))]
    index = np.empty(len(cities), dtype=np.int64)
    problems: dict[tuple[str, str], tuple[str, list[int]]] = {}  # one message per distinct label
    matcher = CountryMatcher(places.country_names())
    for i, (city, country) in enumerate(zip(cities, countries)):
        hits = places.find(city, country)
        if len(hits) == 1:
            index[i] = hits[0]
            continue
        if (city, country) not in problems:
            problem = _place_problem(city, country, hits, places)
            if country and matcher.find(country) is None and country_code(country) is None:  # a misspelt country?
                problem += f"; {matcher.problem(country)}"
            problems[(city, country)] = (problem, [])
        problems[(city, country)][1].append(lines[i])
    if problems:
        items = [f"line {', '.join(map(str, rows[:3]))}{'...' if len(rows) > 3 else ''}: {msg}"
                 for msg, rows in problems.values()]
        n_rows = sum(len(rows) for _, rows in problems.values())
        raise DatasetError(
            f"{source}: {n_rows} row(s) name places that are not candidates of {places.source}: "
            f"{_listed(items[:_MAX_LISTED], len(items))}; add them to the places CSV (or lower the "
            f"minimum population) or fix the labels"
        )
    warn_custom_countries(matcher.custom(countries), source, f"the countries of {places.source}")
    return index


def _place_problem(city: str, country: str, hits: list[int], places: PlaceList) -> str:
    if hits:
        where = ", ".join(sorted(places[j].country for j in hits))
        return f"city {city!r} is ambiguous ({where}); add a country column to the labels"
    elsewhere = places.find(city)
    if elsewhere:
        where = sorted({places[j].country for j in elsewhere})
        custom = [f"; {c!r} of the places is no known country{''.join(f' (did you mean {n!r}?)' for n in near)}"
                  for c in where if country_code(c) is None for near in [suggest_countries(c, n=1)]]
        return (f"city {city!r} is a candidate in {', '.join(where)}, not in {country!r}; make the country names agree"
                + "".join(custom))
    near = places.suggest(city)
    hint = f" (did you mean {', '.join(repr(n) for n in near)}?)" if near else ""
    return f"city {city!r} is not a candidate place{hint}"


def image_countries(labels: LabelledImages, places: PlaceList | None) -> list[str]:
    """Country of each image for country-level GEM: the labels' own country column, else the
    country of the image's city among ``places``, else of its nearest place by coordinates."""
    if labels.countries and all(labels.countries):
        return list(labels.countries)
    if places is None:
        raise DatasetError(f"{labels.source}: the labels have no country column; pass the candidate places "
                           f"(--places) so that each image's country comes from its city or its coordinates")
    if any(labels.cities):
        return country_labels(labels, places)
    return [places[i].country for i in nearest_places(labels.lat, labels.lon, places)[0]]


def country_labels(labels: LabelledImages, places: PlaceList) -> list[str]:
    """Country of each image, taken from the candidate place of its city (country-level GEM)."""
    if labels.place_index is not None:
        return [places[i].country for i in labels.place_index]
    if not any(labels.cities):
        raise DatasetError(
            f"{labels.source}: no city labels, so no country labels can be derived; "
            f"use a CSV with a city column, or progeo.geo.places.nearest_places on the coordinates"
        )
    return [places[i].country for i in match_places(labels.cities, labels.countries, places, labels.source,
                                                    labels.lines)]
