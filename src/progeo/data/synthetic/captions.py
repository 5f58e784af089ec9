"""Captions derived from what a view shows: place, facades, trees, signs, occluders, conditions.

Example: "a street view photo in Lisbon, Portugal: pastel yellow plaster facades and azure blue
tiled walls, orange trees, storefront signs, daytime, clear weather". Wording varies with the
capture's seed so that a caption model cannot rely on one fixed sentence.
"""

from __future__ import annotations

import numpy as np

from progeo.data.synthetic.buildings import BuildingTable
from progeo.data.synthetic.cities import COLOUR_NAMES, MATERIALS, CityStyle
from progeo.data.synthetic.conditions import Conditions
from progeo.data.synthetic.render import ViewInfo

PLACE = (
    "a street view photo in {city}, {country}",
    "a street-level photo taken in {city}, {country}",
    "street view image of {city}, {country}",
    "a photo of a street in {city}, {country}",
    "a street scene in {city}, {country}",
)
MATERIAL_WORD = {"plaster": "plaster", "brick": "brick", "wood": "wooden", "glass": "glass",
                 "tile": "tiled", "stone": "stone", "adobe": "adobe"}
SURFACE = ("facades", "walls", "buildings", "house fronts")
TIME = {"day": ("daytime", "during the day", "in daylight"), "dusk": ("at dusk", "at sunset", "in the evening"),
        "night": ("at night", "night time", "after dark")}
WEATHER = {"clear": ("clear weather", "sunny", "clear sky"), "overcast": ("overcast sky", "cloudy", "grey sky"),
           "fog": ("foggy", "in fog", "misty"), "rain": ("rainy", "in the rain", "wet street, rain")}
SEASON_TREES = {"spring": "in blossom", "summer": "in leaf", "autumn": "with autumn leaves", "winter": "bare"}


def describe_building(T: BuildingTable, b: int, year: int) -> str:
    colour = COLOUR_NAMES[T.colour_b[b] if year >= T.repaint_year[b] else T.colour_a[b]]
    material = MATERIAL_WORD[MATERIALS[T.material[b]]]
    stem = {"wooden": "wood", "tiled": "tile"}.get(material, material)
    if stem in colour:  # "brick red" + "brick" -> "red brick", "glass blue" + "glass" -> "blue glass"
        colour = colour.replace(stem, "").strip()
    return f"{colour} {material}"


def caption(style: CityStyle, T: BuildingTable, cond: Conditions, info: ViewInfo,
            rng: np.random.Generator) -> str:
    def choose(options):
        return options[int(rng.integers(len(options)))]

    place = choose(PLACE).format(city=style.name, country=style.country)
    parts = []
    looks = []
    for b in info.buildings[:2]:
        d = describe_building(T, b, cond.year)
        if d not in looks:
            looks.append(d)
    if looks:
        parts.append(" and ".join(f"{d} {choose(SURFACE)}" for d in looks))
    if info.trees > 0.01:
        kind = style.tree_name
        season_word = SEASON_TREES[cond.season] if style.tree in ("round", "blossom") else ""
        parts.append(f"{kind} {season_word}".strip())
    if info.signs > 0.002:
        parts.append(choose(("storefront signs", "shop signs", "signs over the shops")))
    if info.lamps > 0.002:
        parts.append("utility poles" if style.pole == "utility" else choose(("street lamps", "lamp posts")))
    if info.occluders:
        cars = info.occluders.count("car") + info.occluders.count("van")
        people = info.occluders.count("pedestrian")
        if cars:
            parts.append("a car" if cars == 1 else "cars")
        if people:
            parts.append("a pedestrian" if people == 1 else "pedestrians")
    if info.wall < 0.15 and info.sky > 0.3:
        parts.append(choose(("an open street", "a wide view down the street")))
    parts.append(choose(TIME[cond.time]))
    parts.append(choose(WEATHER[cond.weather]))
    if cond.snow:
        parts.append(choose(("snow on the ground", "snowy street")))
    elif rng.random() < 0.3:
        parts.append(cond.season)
    return f"{place}: {', '.join(parts)}"
