"""Where was a photo taken: position and confidence from its best retrieved database images.

Model-independent: input is the search result (ids and scores, best first) and the
coordinates of the database images; a ``Localizer`` tying a model and an index together only
has to call :func:`predict_positions`.

Outputs per photo (the columns of ``progeo localize``, the fields of its JSON and GeoJSON)
    query          the photo: its path as given (folders expanded in natural order)
    lat, lon       predicted position (WGS84 degrees): the best match's position, as in the
                   recall@1 protocol; utm_east, utm_north, utm_zone: the same in UTM
    score          similarity to the best match, higher is better: cosine similarity, or minus
                   the Euclidean distance for the l2 metric (:mod:`progeo.eval.search`)
    confidence     0..1, a similarity-weighted vote of the 10 best matches (always 10, whatever
                   ``top_k``) for the predicted place and city: :mod:`progeo.eval.confidence`
    agreeing       of the runner-up matches (ranks 2-10), how many lie within
                   ``positive_dist`` (25 m) of the predicted position: the same place
    agreeing_city  of the runner-ups, how many lie within 25 km of it: the same city
    runner_ups     how many runner-ups there were (9 unless the database is smaller)
    matches        the ``top_k`` best database images: rank (1 = best), database_index, score,
                   lat, lon, distance_to_prediction_m (metres from the predicted position) and path

Distances between two images use UTM (Euclidean) when they share a zone and hemisphere, the
great-circle distance otherwise.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import utm

from progeo.errors import ConfigError, DatasetError
from progeo.eval.confidence import CITY_DIST_M, CONFIDENCE_DEPTH, agreement, soft_confidence
from progeo.eval.recall import POSITIVE_DIST_M
from progeo.geo.metrics import haversine_km
from progeo.io import atomic_path, write_json_atomic

def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres (broadcasting over arrays of degrees)."""
    return haversine_km(lat1, lon1, lat2, lon2) * 1000.0


def utm_zones(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTM zone numbers and latitude-band letters for arrays of degrees (Norway and
    Svalbard exceptions included)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    numbers = (np.floor((lon + 180.0) / 6.0).astype(np.int64) % 60) + 1
    numbers = np.where((lat >= 56) & (lat < 64) & (lon >= 3) & (lon < 12), 32, numbers)
    svalbard = (lat >= 72) & (lat <= 84) & (lon >= 0) & (lon < 42)
    numbers = np.where(svalbard, np.select([lon < 9, lon < 21, lon < 33], [31, 33, 35], 37), numbers)
    bands = np.array(list("CDEFGHJKLMNPQRSTUVWXX"))
    letters = bands[np.clip(((lat + 80.0) // 8).astype(np.int64), 0, 20)]
    return numbers, letters


@dataclass(frozen=True)
class DatabaseCoordinates:
    """Per database image: UTM east/north (m), zone number and letter, lat/lon (degrees), path.

    Missing lat/lon (NaN, e.g. empty file-name fields) are computed from UTM.
    """

    east: np.ndarray
    north: np.ndarray
    zone_number: np.ndarray
    zone_letter: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    paths: Sequence[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.east)
        for name in ("north", "zone_number", "zone_letter", "lat", "lon"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"database coordinates: {name} has {len(getattr(self, name))} entries, east has {n}")
        if self.paths is not None and len(self.paths) != n:
            raise DatasetError(f"database coordinates: {len(self.paths)} paths for {n} images")
        cast = {
            "east": np.asarray(self.east, dtype=np.float64), "north": np.asarray(self.north, dtype=np.float64),
            "zone_number": np.asarray(self.zone_number, dtype=np.int64),
            "zone_letter": np.char.upper(np.asarray(self.zone_letter).astype(str)),
            "lat": np.array(self.lat, dtype=np.float64), "lon": np.array(self.lon, dtype=np.float64),
        }
        missing = ~(np.isfinite(cast["lat"]) & np.isfinite(cast["lon"]))
        for zone in {(int(z), str(l)) for z, l in zip(cast["zone_number"][missing], cast["zone_letter"][missing])}:
            rows = missing & (cast["zone_number"] == zone[0]) & (cast["zone_letter"] == zone[1])
            try:
                cast["lat"][rows], cast["lon"][rows] = utm.to_latlon(cast["east"][rows], cast["north"][rows], *zone)
            except (utm.OutOfRangeError, ValueError) as exc:
                raise DatasetError(f"database UTM coordinates in zone {zone[0]}{zone[1]} are invalid ({exc}): check the image names") from exc
        for name, value in cast.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_utm(cls, east, north, zone_number, zone_letter, paths: Sequence[str] | None = None) -> "DatabaseCoordinates":
        nan = np.full(len(east), np.nan)
        return cls(east, north, zone_number, zone_letter, nan, nan.copy(), paths)

    @classmethod
    def from_latlon(cls, lat, lon, paths: Sequence[str] | None = None) -> "DatabaseCoordinates":
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        if np.any(~np.isfinite(lat) | (np.abs(lat) > 84) | ~np.isfinite(lon) | (np.abs(lon) > 180)):
            raise DatasetError("database latitudes must lie in [-84, 84] and longitudes in [-180, 180] (UTM's range)")
        numbers, letters = utm_zones(lat, lon)
        east, north = np.empty_like(lat), np.empty_like(lat)
        for zone, northern in {(int(z), bool(n)) for z, n in zip(numbers, lat >= 0)}:
            rows = (numbers == zone) & ((lat >= 0) == northern)
            east[rows], north[rows], _, _ = utm.from_latlon(
                lat[rows], lon[rows], force_zone_number=zone, force_zone_letter="N" if northern else "M"
            )
        return cls(east, north, numbers, letters, lat, lon, paths)

    def __len__(self) -> int:
        return len(self.east)

    def distances_m(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Distances between database images ``a`` and ``b`` (broadcastable index arrays)."""
        same = (self.zone_number[a] == self.zone_number[b]) & ((self.zone_letter[a] >= "N") == (self.zone_letter[b] >= "N"))
        planar = np.hypot(self.east[a] - self.east[b], self.north[a] - self.north[b])
        return np.where(same, planar, haversine_m(self.lat[a], self.lon[a], self.lat[b], self.lon[b]))


@dataclass(frozen=True)
class Match:
    rank: int  # 1 = best
    database_index: int
    score: float
    lat: float
    lon: float
    distance_to_prediction_m: float
    path: str | None


@dataclass(frozen=True)
class PhotoPrediction:
    query: str
    lat: float
    lon: float
    utm_east: float
    utm_north: float
    utm_zone_number: int
    utm_zone_letter: str
    score: float
    confidence: float
    agreeing: int
    agreeing_city: int
    runner_ups: int
    matches: tuple[Match, ...]

    def as_dict(self) -> dict:
        return asdict(self) | {"matches": [asdict(m) for m in self.matches]}


def cosine_scale_scores(scores: np.ndarray, query_norms: np.ndarray) -> np.ndarray:
    """l2-metric scores (minus Euclidean distances) mapped onto a cosine-like scale,
    ``1 - d^2 / (2 |q|^2)``: exactly the cosine similarity for unit descriptors, and invariant to
    the overall scale of raw ones, so one confidence temperature serves both metrics."""
    scores, norms = np.asarray(scores, dtype=np.float64), np.asarray(query_norms, dtype=np.float64)
    return 1.0 - scores**2 / (2.0 * np.maximum(norms, 1e-12)[:, None] ** 2)


def predict_positions(
    ids: np.ndarray,
    scores: np.ndarray,
    database: DatabaseCoordinates,
    query_names: Sequence[str],
    positive_dist: float = POSITIVE_DIST_M,
    top_k: int | None = None,
    confidence_scores: np.ndarray | None = None,
) -> list[PhotoPrediction]:
    """One :class:`PhotoPrediction` per query from its Q x K search result (best first).

    ``confidence_scores`` (Q x K, default ``scores``): the scores on the cosine scale that the
    confidence's temperature is set in (see :func:`cosine_scale_scores` for the l2 metric).

    The confidence looks at the first ``CONFIDENCE_DEPTH`` (10) columns, so search that many
    (or more) whatever ``top_k``; each prediction keeps the first ``top_k`` matches (all: None).
    """
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    if ids.ndim != 2 or ids.shape != scores.shape or len(ids) != len(query_names):
        raise ConfigError(f"ids {ids.shape} and scores {scores.shape} must both be {len(query_names)} queries x K")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k={top_k} must be at least 1")
    if ids.size and ids.max() >= len(database):
        raise DatasetError(f"match id {ids.max()} is outside the database of {len(database)} images: index and database differ")
    if len(ids) and np.any(ids[:, 0] < 0):
        raise DatasetError("a photo got no match at all: the index is empty")
    valid = ids >= 0
    safe = np.where(valid, ids, ids[:, :1])
    to_prediction = database.distances_m(safe, safe[:, :1])
    runner_ups, agreeing, agreeing_city = agreement(to_prediction, valid, positive_dist, CONFIDENCE_DEPTH)
    conf_scores = scores if confidence_scores is None else np.asarray(confidence_scores, dtype=np.float64)
    confidence = soft_confidence(conf_scores, to_prediction, valid, positive_dist, CONFIDENCE_DEPTH)
    shown = ids.shape[1] if top_k is None else top_k
    predictions = []
    for q, name in enumerate(query_names):  # assembling output records; the maths is above
        best = int(ids[q, 0])
        matches = tuple(
            Match(rank + 1, int(i), float(scores[q, rank]), float(database.lat[i]), float(database.lon[i]),
                  float(to_prediction[q, rank]), None if database.paths is None else str(database.paths[i]))
            for rank, i in enumerate(ids[q, :shown]) if i >= 0
        )
        predictions.append(PhotoPrediction(
            str(name), float(database.lat[best]), float(database.lon[best]), float(database.east[best]),
            float(database.north[best]), int(database.zone_number[best]), str(database.zone_letter[best]),
            float(scores[q, 0]), float(confidence[q]), int(agreeing[q]), int(agreeing_city[q]), int(runner_ups[q]),
            matches,
        ))
    return predictions


def prediction_rows(predictions: Sequence[PhotoPrediction]) -> list[dict]:
    """One flat dict per photo (for tables and CSV)."""
    return [
        {"query": p.query, "lat": p.lat, "lon": p.lon, "utm_east": p.utm_east, "utm_north": p.utm_north,
         "utm_zone": f"{p.utm_zone_number}{p.utm_zone_letter}", "score": p.score, "confidence": p.confidence,
         "agreeing": p.agreeing, "agreeing_city": p.agreeing_city, "runner_ups": p.runner_ups,
         "best_match": p.matches[0].path if p.matches else None}
        for p in predictions
    ]


def format_predictions_table(predictions: Sequence[PhotoPrediction]) -> str:
    """The table ``progeo localize`` prints (columns: the module docstring)."""
    header = ["query", "lat", "lon", "UTM", "score", "confidence", "agreeing", "agreeing_city"]
    body = [[r["query"], f"{r['lat']:.6f}", f"{r['lon']:.6f}", f"{r['utm_east']:.1f} {r['utm_north']:.1f} {r['utm_zone']}",
             f"{r['score']:.3f}", f"{r['confidence']:.2f}", f"{r['agreeing']}/{r['runner_ups']}",
             f"{r['agreeing_city']}/{r['runner_ups']}"] for r in prediction_rows(predictions)]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in [header] + body)


SCORE_MEANING = {"cosine": "cosine similarity (higher is better)",
                 "l2": "minus the Euclidean distance between descriptors (higher is better)"}


def predictions_to_json(predictions: Sequence[PhotoPrediction], positive_dist: float = POSITIVE_DIST_M,
                        metric: str | None = None) -> dict:
    head = {"metric": metric, "score": SCORE_MEANING.get(metric)} if metric else {}
    return {"positive_dist_m": positive_dist, **head, "predictions": [p.as_dict() for p in predictions]}


def predictions_to_geojson(predictions: Sequence[PhotoPrediction], include_matches: bool = True) -> dict:
    """RFC 7946 FeatureCollection: one Point per photo (``kind: "prediction"``) and, with
    ``include_matches``, one per retrieved image (``kind: "match"``); coordinates are [lon, lat]."""
    features = []
    for p in predictions:
        properties = {k: v for k, v in p.as_dict().items() if k not in ("matches", "lat", "lon")}
        features.append(_point(p.lon, p.lat, {"kind": "prediction", **properties}))
        if include_matches:
            for m in p.matches:
                features.append(_point(m.lon, m.lat, {"kind": "match", "query": p.query, **{k: v for k, v in asdict(m).items() if k not in ("lat", "lon")}}))
    return {"type": "FeatureCollection", "features": features}


def _point(lon: float, lat: float, properties: dict) -> dict:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": properties}


def write_predictions_json(predictions: Sequence[PhotoPrediction], path: str | os.PathLike,
                           metric: str | None = None) -> None:
    write_json_atomic(path, predictions_to_json(predictions, metric=metric))


def write_geojson(predictions: Sequence[PhotoPrediction], path: str | os.PathLike, include_matches: bool = True) -> None:
    write_json_atomic(path, predictions_to_geojson(predictions, include_matches))


def write_map(
    predictions: Sequence[PhotoPrediction],
    path: str | os.PathLike,
    include_matches: bool = True,
    confidence_levels: tuple[float, float] = (0.3, 0.6),
    positive_dist: float = POSITIVE_DIST_M,
) -> None:
    """An interactive folium (Leaflet) HTML map: a marker per photo, red/orange/green for a
    confidence below ``confidence_levels[0]`` / between / above ``confidence_levels[1]``, and
    small circles for its other matches, coloured as in the grid: green within ``positive_dist``
    of the prediction, orange within 25 km, red farther."""
    import folium

    if not predictions:
        raise ConfigError(f"no prediction to draw in {path}: localize at least one photo")
    centre = [float(np.mean([p.lat for p in predictions])), float(np.mean([p.lon for p in predictions]))]
    fmap = folium.Map(location=centre, zoom_start=15, tiles="OpenStreetMap")
    for p in predictions:
        color = "red" if p.confidence < confidence_levels[0] else "orange" if p.confidence < confidence_levels[1] else "green"
        popup = f"<b>{p.query}</b><br>{p.lat:.6f}, {p.lon:.6f}<br>score {p.score:.3f}, confidence {p.confidence:.3f}"
        folium.Marker([p.lat, p.lon], popup=folium.Popup(popup, max_width=400), tooltip=p.query, icon=folium.Icon(color=color)).add_to(fmap)
        if include_matches:
            for m in p.matches[1:]:
                d = m.distance_to_prediction_m
                color = "green" if d <= positive_dist else "orange" if d <= CITY_DIST_M else "red"
                folium.CircleMarker([m.lat, m.lon], radius=4, color=color, fill=True,
                                    tooltip=f"{p.query} #{m.rank}: {m.score:.3f}, {d:.0f} m from the prediction").add_to(fmap)
    with atomic_path(path) as tmp:
        fmap.save(os.fspath(tmp))
