"""Local metric frames of the synthetic cities, converted to UTM and WGS84 with ``utm``.

A city's local frame has x pointing east and y pointing north, in metres, with its origin at
the city's real centre, rounded to 10 m. A point's UTM position is the origin's UTM position plus (x, y) in the
origin's zone, and its latitude/longitude is the exact inverse of that UTM position, so the
two agree to the precision written into the file names (UTM 0.01 m, lat/lon 1e-6 degree).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import utm


@dataclass(frozen=True)
class UTMFrame:
    """Origin of a city's local frame in UTM coordinates."""

    east0: float
    north0: float
    zone_number: int
    zone_letter: str

    @property
    def zone(self) -> str:
        return f"{self.zone_number}{self.zone_letter}"


def city_frame(lat: float, lon: float) -> UTMFrame:
    east, north, number, letter = utm.from_latlon(lat, lon)
    # Round the origin to a multiple of 10 m: the local 10 m grid (street centrelines on 10 k + 5)
    # is then the UTM grid of CosPlace cells.
    return UTMFrame(float(np.round(east / 10.0) * 10.0), float(np.round(north / 10.0) * 10.0),
                    int(number), str(letter))


def local_to_utm(frame: UTMFrame, x, y) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x, dtype=np.float64) + frame.east0, np.asarray(y, dtype=np.float64) + frame.north0


def local_to_latlon(frame: UTMFrame, x, y) -> tuple[np.ndarray, np.ndarray]:
    east, north = local_to_utm(frame, x, y)
    lat, lon = utm.to_latlon(np.atleast_1d(east), np.atleast_1d(north), frame.zone_number,
                             frame.zone_letter)
    return np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)


def zone_letter(lat: float) -> str:
    """Latitude band of a point (it can differ from the origin's band near a band edge)."""
    return str(utm.latitude_to_zone_letter(lat))
