"""Capture conditions (time of day, weather, season, snow, occluders, capture date) and lighting.

A :class:`Conditions` is shared by all views of one capture (a panorama, or one query);
:func:`lighting` turns it into sky colours, ambient/sun light, haze distance and how strongly
windows, signs and street lights glow. :func:`sample_conditions` draws a capture's conditions
from the city's climate (rainy Bergen, sunny Marrakesh, snowy Oslo winters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from progeo.data.synthetic.cities import CityStyle, pick
from progeo.errors import ConfigError

TIMES = ("day", "dusk", "night")
WEATHERS = ("clear", "overcast", "fog", "rain")
SEASONS = ("spring", "summer", "autumn", "winter")
OCCLUDERS = ("none", "light", "heavy")


@dataclass(frozen=True)
class Conditions:
    time: str = "day"
    weather: str = "clear"
    season: str = "summer"
    snow: bool = False
    occluders: str = "none"
    year: int = 2018
    month: int = 6
    sun_azimuth: float = 150.0  # compass degrees
    sun_elevation: float = 40.0
    exposure: float = 1.0

    def __post_init__(self) -> None:
        for name, allowed in (("time", TIMES), ("weather", WEATHERS), ("season", SEASONS),
                              ("occluders", OCCLUDERS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"Conditions.{name}={getattr(self, name)!r} is not one of {allowed}")
        if not 1 <= self.month <= 12:
            raise ConfigError(f"Conditions.month={self.month} must be 1..12")

    @property
    def timestamp(self) -> str:
        return f"{self.year:04d}{self.month:02d}"

    @property
    def note(self) -> str:
        parts = [self.time, self.weather, self.season] + (["snow"] if self.snow else [])
        if self.occluders == "heavy":
            parts.append("occluded")
        return "-".join(parts)

    def with_(self, **kw) -> "Conditions":
        return replace(self, **kw)


@dataclass(frozen=True)
class Lighting:
    zenith: np.ndarray
    horizon: np.ndarray
    cloud: np.ndarray
    cloud_cover: float
    ambient: np.ndarray  # rgb multiplier for surfaces in shade
    sun: np.ndarray  # rgb added on faces turned to the sun
    sun_dir: tuple[float, float]  # horizontal unit vector towards the sun (x east, y north)
    sun_elev: float
    haze_dist: float
    haze: np.ndarray
    emit: float  # glow of lit windows / signs / lamps
    wet: float
    lamps: bool


def _rgb(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


def lighting(c: Conditions) -> Lighting:
    az = math.radians(c.sun_azimuth)
    sun_dir = (math.sin(az), math.cos(az))
    elev = math.radians(c.sun_elevation)
    if c.time == "night":
        zen, hor, amb, sun, emit = _rgb(0.01, 0.015, 0.04), _rgb(0.09, 0.08, 0.1), _rgb(0.06, 0.065, 0.09), 0.0, 1.0
    elif c.time == "dusk":
        zen, hor, amb, sun, emit = _rgb(0.22, 0.24, 0.42), _rgb(0.95, 0.62, 0.38), _rgb(0.42, 0.38, 0.42), 0.35, 0.6
        elev = math.radians(6.0)
    else:
        zen, hor, amb, sun, emit = _rgb(0.3, 0.5, 0.84), _rgb(0.72, 0.82, 0.93), _rgb(0.6, 0.62, 0.66), 0.55, 0.0
    cloud = {"day": _rgb(0.95, 0.95, 0.97), "dusk": _rgb(0.75, 0.55, 0.55), "night": _rgb(0.05, 0.05, 0.07)}[c.time]
    cover, haze_dist, wet = 0.3, 450.0, 0.0
    if c.weather == "overcast":
        g = 0.72 if c.time == "day" else 0.25 if c.time == "dusk" else 0.05
        zen, hor, cloud, cover, sun, haze_dist = _rgb(g, g + 0.02, g + 0.05), _rgb(g + 0.08, g + 0.09, g + 0.1), \
            _rgb(g + 0.1, g + 0.1, g + 0.11), 0.85, sun * 0.15, 280.0
        amb = amb * 1.15
    elif c.weather == "fog":
        g = 0.8 if c.time == "day" else 0.45 if c.time == "dusk" else 0.07
        zen = hor = cloud = _rgb(g, g + 0.01, g + 0.02)
        cover, sun, haze_dist, amb = 0.0, 0.0, 36.0, amb * 1.2
    elif c.weather == "rain":
        g = 0.5 if c.time == "day" else 0.2 if c.time == "dusk" else 0.04
        zen, hor, cloud = _rgb(g - 0.05, g - 0.03, g), _rgb(g + 0.08, g + 0.09, g + 0.1), _rgb(g, g, g + 0.02)
        cover, sun, haze_dist, wet, amb = 0.95, 0.0, 140.0, 1.0, amb * 0.95
    if c.time == "dusk":
        sun_rgb = _rgb(1.0, 0.62, 0.38) * sun
    else:
        sun_rgb = _rgb(1.0, 0.96, 0.88) * sun
    return Lighting(zen, hor, cloud, cover, amb, sun_rgb, sun_dir, elev, haze_dist, hor.copy(),
                    emit, wet, c.time != "day")


def season_of(month: int) -> str:
    return SEASONS[((month % 12) // 3 + 3) % 4]


def sample_conditions(rng: np.random.Generator, style: CityStyle, year: int, *, time: str = "day",
                      weather: str | None = None, month: int | None = None,
                      occluders: str = "none") -> Conditions:
    """Conditions of one capture in ``style``'s climate; ``weather=None`` draws from its prior."""
    month = int(rng.integers(1, 13)) if month is None else month
    season = season_of(month)
    if weather is None:
        weather = pick(rng, style.weather)
    snow = season == "winter" and rng.random() < style.snow_prob
    if snow and weather == "rain":
        weather = "overcast"
    noon_elev = 90.0 - abs(style.lat - 23.4 * math.cos(2 * math.pi * (month - 6.5) / 12))
    return Conditions(
        time=time, weather=weather, season=season, snow=bool(snow), occluders=occluders,
        year=int(year), month=month, sun_azimuth=float(rng.uniform(100, 260)),
        sun_elevation=float(max(8.0, noon_elev * rng.uniform(0.45, 0.95))),
        exposure=float(rng.uniform(0.9, 1.1)),
    )
