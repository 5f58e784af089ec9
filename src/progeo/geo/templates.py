"""Geo-contextualised prompt templates of GEM (a label placed in its geographic context).

City-level templates use ``{city}`` and ``{country}``; country-level ones use ``{country}``.
Several templates are averaged per place (prompt ensembling) by the zero-shot classifier;
:func:`render_texts` gives the texts, one list per place, in template order.

A custom template file has one template per line; blank lines and lines starting with ``#``
are skipped. A placeholder other than the level's (e.g. ``{town}``), an empty ``{}``, a
format spec, stray braces, or a city template without ``{city}`` is an error naming the line.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Iterable, Sequence

from progeo.errors import ConfigError, reading
from progeo.geo.places import Place

LEVELS = ("city", "country")
PLACEHOLDERS = {"city": ("city", "country"), "country": ("country",)}

CITY_TEMPLATES: tuple[str, ...] = (
    "a street view photo taken in {city}, {country}.",
    "a photo of a street in {city}, {country}.",
    "a street view image from {city}, a city in {country}.",
    "a photo taken in the city of {city}, {country}.",
    "a google street view image of {city}, {country}.",
    "a photo of the buildings and roads of {city}, {country}.",
    "an urban scene in {city}, {country}.",
    "a street-level photo of {city} in {country}.",
)

COUNTRY_TEMPLATES: tuple[str, ...] = (
    "a street view photo taken in {country}.",
    "a photo of a street in {country}.",
    "a street view image from a city in {country}.",
    "a google street view image of {country}.",
    "a photo of the buildings and roads of {country}.",
    "a street-level photo taken somewhere in {country}.",
)


def default_templates(level: str) -> tuple[str, ...]:
    """The built-in templates of ``level`` (``"city"`` or ``"country"``)."""
    _check_level(level)
    return CITY_TEMPLATES if level == "city" else COUNTRY_TEMPLATES


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"unknown classification level {level!r}; choose one of {', '.join(LEVELS)}")


def template_problem(template: str, level: str) -> str:
    """What is wrong with ``template`` at ``level``, or ``""`` when it is valid."""
    _check_level(level)
    allowed = PLACEHOLDERS[level]
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"malformed braces ({exc}); write literal braces as '{{{{' and '}}}}'"
    used = set()
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name == "" or name.isdigit():
            return f"positional placeholder '{{{name}}}'; name it, one of {_braced(allowed)}"
        if name not in allowed:
            return f"unknown placeholder '{{{name}}}'; {level}-level templates may use {_braced(allowed)}"
        if spec or conversion:
            return f"placeholder '{{{name}}}' has a format spec or conversion; write plain {_braced((name,))}"
        used.add(name)
    if level not in used:
        return f"no '{{{level}}}' placeholder: every place would get the same text"
    return ""


def _braced(names: Iterable[str]) -> str:
    return ", ".join("{" + n + "}" for n in names)


def validate_templates(templates: Sequence[str], level: str, source: str = "templates") -> tuple[str, ...]:
    """Return ``templates`` as a tuple, or raise :class:`ConfigError` naming the bad entry."""
    if not templates:
        raise ConfigError(f"{source}: no templates; give at least one")
    for i, template in enumerate(templates, start=1):
        problem = template_problem(template, level)
        if problem:
            raise ConfigError(f"{source}, template {i} {template!r}: {problem}")
    return tuple(templates)


def load_templates(path: str | os.PathLike, level: str) -> tuple[str, ...]:
    """Read one template per line from ``path`` and validate them for ``level``."""
    _check_level(level)
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: template file not found; check the path")
    templates = []
    with reading(path, "template file", "save it as UTF-8 text, one template per line", ConfigError):
        text = path.read_text(encoding="utf-8-sig")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = template_problem(line, level)
        if problem:
            raise ConfigError(f"{path}, line {number}: {problem}")
        templates.append(line)
    if not templates:
        raise ConfigError(f"{path}: no templates (only blank or '#' lines); write one template per line")
    return tuple(templates)


def render_texts(templates: Sequence[str], places: Iterable[Place] | Iterable[str], level: str) -> list[list[str]]:
    """Texts per place: ``texts[i][j]`` is template ``j`` filled in for place ``i``.

    At city level ``places`` are :class:`Place` objects; at country level they are country
    names (e.g. ``PlaceList.country_names()``) or places, whose country is used.
    """
    templates = validate_templates(list(templates), level)
    texts = []
    for place in places:
        if level == "city":
            if not isinstance(place, Place):
                raise TypeError(f"city-level texts need Place objects, got {type(place).__name__}")
            values = {"city": place.name, "country": place.country}
        else:
            values = {"country": place.country if isinstance(place, Place) else str(place)}
        texts.append([t.format(**values) for t in templates])
    return texts
