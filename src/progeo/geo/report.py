"""What GEM runs share: the class table, per-image predictions, the ground truth, metrics and tables.

- :class:`ClassTable`: the classes of a run (cities or countries) with a country and the
  coordinates that a prediction of the class stands for;
- :class:`Predictions`: top-k classes and scores per image plus the coordinates of the best,
  written as CSV or JSON;
- :func:`true_classes`: each labelled image's class (its city label matched against the
  classes, or, without a city label as in IM2GPS3k, the nearest class/candidate place);
- :func:`gem_metrics`: top-1/top-5, shares within 1/25/200/750/2500 km, median km and the
  per-country confusion table (:mod:`progeo.geo.metrics`);
- :func:`metrics_table`: one row per run, as Markdown or plain text.

The synthetic-world report of zero-shot and linear probe is :func:`progeo.geo.gem_report.run_gem_report`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progeo.errors import DatasetError
from progeo.geo.countries import CountryMatcher, warn_custom_countries
from progeo.geo.labelled_images import LabelledImages, image_countries, match_places, read_labelled_images
from progeo.geo.metrics import DEFAULT_THRESHOLDS_KM, country_confusion, geo_metrics, haversine_km
from progeo.geo.places import Place, PlaceList, nearest_places
from progeo.io import atomic_path, write_json_atomic


def geo_medoid(lat: np.ndarray, lon: np.ndarray, max_points: int = 2048) -> tuple[float, float]:
    """The point of ``(lat, lon)`` with the smallest total great-circle distance to the others.

    A real location (a city, an image's position) that minimises the mean km error when a whole
    group of places is predicted as one point; for more than ``max_points`` points, the search
    and the sums use that many evenly spaced ones.
    """
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    if len(lat) > max_points:
        keep = np.unique(np.linspace(0, len(lat) - 1, max_points).round().astype(np.int64))
        lat, lon = lat[keep], lon[keep]
    best = int(haversine_km(lat[:, None], lon[:, None], lat[None], lon[None]).sum(axis=1).argmin())
    return float(lat[best]), float(lon[best])


@dataclass
class ClassTable:
    """Classes of one level; ``lat/lon`` is where a prediction of the class is placed."""

    level: str  # "city" or "country"
    names: list[str]
    countries: list[str]
    lat: np.ndarray
    lon: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_places(cls, places: PlaceList, level: str) -> ClassTable:
        """Cities as they are; each country placed at the medoid of its candidate cities (:func:`geo_medoid`)."""
        if level == "city":
            return cls("city", places.names, places.countries, places.lats, places.lons, places.source)
        names = places.country_names()
        own = np.array(places.countries)
        coords = [geo_medoid(places.lats[own == c], places.lons[own == c]) for c in names]
        return cls("country", names, list(names), np.array([c[0] for c in coords]), np.array([c[1] for c in coords]),
                   places.source)

    def as_places(self) -> PlaceList:
        return PlaceList([Place(n, c, float(a), float(o)) for n, c, a, o in zip(self.names, self.countries, self.lat, self.lon)],
                         source=self.source or "the classes")

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": n, "country": c, "lat": float(a), "lon": float(o)}
                for n, c, a, o in zip(self.names, self.countries, self.lat, self.lon)]

    @classmethod
    def from_json(cls, items: Sequence[dict], level: str, source: str = "") -> ClassTable:
        return cls(level, [str(i["name"]) for i in items], [str(i["country"]) for i in items],
                   np.array([float(i["lat"]) for i in items]), np.array([float(i["lon"]) for i in items]), source)

    def country_index(self, countries: Sequence[str], source: str | os.PathLike,
                      lines: Sequence[int] | None = None) -> np.ndarray:
        """Class index of each country (country level; any spelling: ``USA`` = ``United States``),
        or a DatasetError naming the unknown ones with their ``lines`` in ``source`` and suggestions."""
        matcher = CountryMatcher(self.names)
        found = [matcher.find(c) for c in countries]
        unknown: dict[str, list[int]] = {}
        for i, (c, f) in enumerate(zip(countries, found)):
            if f is None:
                unknown.setdefault(c, []).append(lines[i] if lines is not None else -1)
        if unknown:
            items = [(f"line {', '.join(map(str, rows[:3]))}{'...' if len(rows) > 3 else ''}: " if rows[0] >= 0 else "")
                     + matcher.problem(c) for c, rows in sorted(unknown.items())]
            raise DatasetError(
                f"{source}: {len(unknown)} countr{'y' if len(unknown) == 1 else 'ies'} of the labels not among the "
                f"{len(self.names)} classes of {self.source or 'the run'}: {', '.join(map(repr, sorted(unknown)[:5]))}"
                f"{' ...' if len(unknown) > 5 else ''} ({'; '.join(items[:5])}); use the same countries (classes: "
                f"{', '.join(self.names[:8])}{' ...' if len(self.names) > 8 else ''}) or add the places")
        return np.array(found, dtype=np.int64)


def rank_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row, best first (ties: lower index first), and their scores."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(np.arange(k), (len(scores), 1))
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


@dataclass
class Predictions:
    """Top-k classes per image, best first, and the coordinates of each image's prediction."""

    classes: ClassTable
    paths: list[str]
    top_index: np.ndarray  # (N, K) int64
    top_score: np.ndarray  # (N, K) float32
    pred_lat: np.ndarray  # (N,)
    pred_lon: np.ndarray
    score_name: str = "cosine"
    truth: dict[str, Any] | None = None  # true_lat, true_lon (arrays), true_city, true_country (lists); see set_truth

    @property
    def pred_countries(self) -> list[str]:
        return [self.classes.countries[i] for i in self.top_index[:, 0]]

    def set_truth(self, lat: np.ndarray, lon: np.ndarray, cities: Sequence[str], countries: Sequence[str]) -> None:
        """The images' true position, city ("" when unknown) and country, in the order of ``paths``: the
        rows then carry them and ``error_km``, the great-circle distance of the prediction."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        if not len(lat) == len(lon) == len(cities) == len(countries) == len(self.paths):
            raise ValueError("set_truth: one true position, city and country per predicted image")
        self.truth = {"true_lat": lat, "true_lon": lon, "true_city": list(cities), "true_country": list(countries),
                      "error_km": haversine_km(lat, lon, self.pred_lat, self.pred_lon)}

    def rows(self, top: int | None = None) -> list[dict[str, Any]]:
        """One dict per image: ``image, lat, lon`` (the prediction), with the truth ``true_lat, true_lon,
        true_city, true_country, error_km`` when known, then ``topN, topN_country, topN_<score>``."""
        k = self.top_index.shape[1] if top is None else min(top, self.top_index.shape[1])
        t = self.truth
        out = []
        for i, path in enumerate(self.paths):
            row = {"image": path, "lat": round(float(self.pred_lat[i]), 6), "lon": round(float(self.pred_lon[i]), 6)}
            if t is not None:
                row.update(true_lat=round(float(t["true_lat"][i]), 6), true_lon=round(float(t["true_lon"][i]), 6),
                           true_city=t["true_city"][i], true_country=t["true_country"][i],
                           error_km=round(float(t["error_km"][i]), 3))
            for r in range(k):
                c = int(self.top_index[i, r])
                row[f"top{r + 1}"] = self.classes.names[c]
                row[f"top{r + 1}_country"] = self.classes.countries[c]
                row[f"top{r + 1}_{self.score_name}"] = round(float(self.top_score[i, r]), 6)
            out.append(row)
        return out

    def write(self, path: str | os.PathLike, top: int | None = None) -> Path:
        """CSV (``.csv``) or JSON (``.json``): one row per image, the best place's lat/lon first."""
        path = Path(path)
        rows = self.rows(top)
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".json":
                tmp.write_text(json.dumps({"level": self.classes.level, "score": self.score_name, "images": rows},
                                          indent=1) + "\n", encoding="utf-8")
            else:
                with open(tmp, "w", newline="", encoding="utf-8") as f:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["image", "lat", "lon"])
                    writer.writeheader()
                    writer.writerows(rows)
        return path


def true_classes(labels: LabelledImages, classes: ClassTable, places: PlaceList | None = None) -> tuple[np.ndarray, list[str]]:
    """(class index, true country) of each labelled image.

    City level: the (city, country) label matched against the classes (unknown city: a
    DatasetError with suggestions); without a city label (IM2GPS3k), the nearest class.
    Country level: the labels' country column, else the country of the image's city (or of
    the nearest place, without a city label) in ``places``.
    """
    if classes.level == "city":
        candidates = classes.as_places()
        if any(labels.cities):
            index = match_places(labels.cities, labels.countries, candidates, labels.source, labels.lines)
        else:
            index = nearest_places(labels.lat, labels.lon, candidates)[0]
        return index, [classes.countries[i] for i in index]
    own_column = bool(labels.countries) and all(labels.countries)
    countries = image_countries(labels, places)
    index = classes.country_index(countries, labels.source, labels.lines)
    if own_column:  # custom countries of the labels matched to the classes by name
        warn_custom_countries(CountryMatcher(classes.names).custom(countries), labels.source,
                              f"the classes of {classes.source or 'the run'}")
    return index, [classes.names[i] for i in index]


def read_images_input(images: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                      flavour: str | None = None) -> tuple[list[str], LabelledImages | None]:
    """``images`` is a folder (predictions only) or a labelled CSV (predictions and metrics)."""
    from progeo.data.image_lists import read_image_list

    path = Path(images)
    if not path.exists():
        raise DatasetError(f"images {path} not found: pass a folder of images or a labels CSV (IM2GPS3k: IMG_ID,LAT,LON; "
                           f"Place Pulse: image,lat,lon,city; synthetic labels.csv: path,lat,lon,city,country)")
    if path.is_dir():
        return list(read_image_list(path, what="images folder")), None
    labels = read_labelled_images(path, images_dir=images_dir, flavour=flavour)
    return [str(p) for p in labels.paths], labels


def subset_labels(labels: LabelledImages, rows: np.ndarray) -> LabelledImages:
    """The labelled images at ``rows`` (positions), e.g. the ones whose features could be computed."""
    rows = np.asarray(rows, dtype=np.int64)
    return LabelledImages(
        paths=[labels.paths[i] for i in rows], lat=labels.lat[rows], lon=labels.lon[rows],
        cities=[labels.cities[i] for i in rows], countries=[labels.countries[i] for i in rows],
        flavour=labels.flavour, source=labels.source,
        place_index=None if labels.place_index is None else labels.place_index[rows],
        lines=None if labels.lines is None else [labels.lines[i] for i in rows])


@dataclass
class GemRun:
    """One evaluated (or prediction-only) run: predictions, metrics when labels were given."""

    name: str
    predictions: Predictions
    metrics: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    top: int | None = None  # places per image in the predictions file (None: all that were ranked)

    def write(self, out_dir: str | os.PathLike, predictions_format: str = "csv") -> dict[str, Path]:
        from progeo.locks import folder_lock

        out = Path(out_dir)
        with folder_lock(out, flag="--out"):  # one writer: predictions and metrics of the same run
            files = {"predictions": self.predictions.write(out / f"predictions.{predictions_format}", self.top)}
            if self.metrics is not None:
                files["metrics"] = out / "metrics.json"
                write_json_atomic(files["metrics"], {"run": self.name, **self.info, "skipped_images": self.skipped,
                                                      **self.metrics})
        return files


def evaluate_labelled(pred: Predictions, labels: LabelledImages, rows: np.ndarray, targets: np.ndarray,
                      true_countries: Sequence[str]) -> dict[str, Any]:
    """Metrics of ``pred`` (the images ``labels[rows]``, whose classes and countries are ``targets`` and
    ``true_countries`` over all of ``labels``), after attaching the truth to the predictions' rows."""
    countries = [true_countries[i] for i in rows]
    pred.set_truth(labels.lat[rows], labels.lon[rows], [labels.cities[i] if labels.cities else "" for i in rows],
                   countries)
    return gem_metrics(pred, targets[rows], labels.lat[rows], labels.lon[rows], countries)


def gem_metrics(pred: Predictions, targets: np.ndarray, true_lat: np.ndarray, true_lon: np.ndarray,
                true_countries: Sequence[str]) -> dict[str, Any]:
    """All GEM metrics of ``pred`` against the truth; ``top5`` is None with fewer than 5 classes."""
    ks = (1, 5) if pred.top_index.shape[1] >= 5 else (1,)
    m = geo_metrics(true_lat=true_lat, true_lon=true_lon, pred_lat=pred.pred_lat, pred_lon=pred.pred_lon,
                    ranked=pred.top_index, targets=targets, true_countries=list(true_countries),
                    pred_countries=pred.pred_countries, ks=ks)
    conf = country_confusion(list(true_countries), pred.pred_countries)
    return {"level": pred.classes.level, "classes": len(pred.classes), **m, "top5": m.get("top5"),
            "country_confusion": conf.to_dict(), "per_country": conf.per_country()}


def confusion_text(metrics: dict[str, Any], markdown: bool = False, top: int | None = 20) -> str:
    from progeo.geo.metrics import CountryConfusion

    c = metrics["country_confusion"]
    conf = CountryConfusion(c["countries"], np.array(c["counts"], dtype=np.int64).reshape(len(c["countries"]), -1))
    return conf.to_markdown(top) if markdown else conf.to_text(top)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def metrics_table(rows: Sequence[tuple[str, dict[str, Any]]], markdown: bool = True,
                  thresholds_km: Sequence[float] = DEFAULT_THRESHOLDS_KM) -> str:
    """One line per ``(run name, metrics)``: accuracies and km shares in %, median error in km."""
    head = ["run", "level", "images", "classes", "top-1 %", "top-5 %"] + [f"<= {t:g} km %" for t in thresholds_km] + ["median km"]
    body = []
    for name, m in rows:
        shares = [_pct(m.get(f"within_{int(t) if float(t).is_integer() else t}km")) for t in thresholds_km]
        body.append([name, m["level"], str(m["n_images"]), str(m["classes"]), _pct(m["top1"]), _pct(m.get("top5"))]
                    + shares + [f"{m['median_km']:.1f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(head[i]), *(len(r[i]) for r in body)) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head)] + [fmt(r) for r in body])
