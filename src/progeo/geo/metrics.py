"""Metrics of classification-based geo-localization (IM2City / GEM, IM2GPS3k protocol).

- great-circle distance (haversine) on a sphere of radius :data:`EARTH_RADIUS_KM`
  = 6371.0088 km, the IUGG mean Earth radius; the spherical model errs by < 0.5 % against
  the WGS84 ellipsoid, well below the 1 km threshold at continental scales;
- share of images within 1, 25, 200, 750, 2500 km, and the median error in km;
- top-k accuracy from a score matrix or from ranked predictions;
- a per-country confusion table;
- :func:`geo_metrics`, one JSON-serialisable dict for a run.

Shares and accuracies are fractions in [0, 1]. Inputs may be numpy arrays, lists or torch
tensors (converted to numpy on the CPU; torch is never imported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from progeo.geo.countries import country_key, country_name

EARTH_RADIUS_KM = 6371.0088
DEFAULT_THRESHOLDS_KM: tuple[float, ...] = (1.0, 25.0, 200.0, 750.0, 2500.0)
_SCORE_CHUNK_ROWS = 2048


def _as_array(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; numpy broadcasting applies.

    ``haversine_km(lat[:, None], lon[:, None], c_lat[None], c_lon[None])`` gives an (N, M) matrix.
    """
    p1, p2 = np.radians(_as_array(lat1)), np.radians(_as_array(lat2))
    dlat = p2 - p1
    dlon = np.radians(_as_array(lon2)) - np.radians(_as_array(lon1))
    a = np.sin(dlat / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2.0) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def _checked_distances(dist_km: Any) -> np.ndarray:
    d = _as_array(dist_km).ravel()
    if d.size == 0:
        raise ValueError("no distances given: the evaluation set is empty")
    if not np.isfinite(d).all():
        raise ValueError(f"{int((~np.isfinite(d)).sum())} distance(s) are NaN or infinite; check the coordinates")
    return d


def share_within_km(dist_km: Any, thresholds_km: Iterable[float] = DEFAULT_THRESHOLDS_KM) -> dict[float, float]:
    """Fraction of distances ``<=`` each threshold, keyed by the threshold in km."""
    d = _checked_distances(dist_km)
    return {float(t): float((d <= t).mean()) for t in thresholds_km}


def median_km(dist_km: Any) -> float:
    """Median distance in km."""
    return float(np.median(_checked_distances(dist_km)))


def _checked_targets(targets: Any, n_rows: int) -> np.ndarray:
    t = _as_array(targets, dtype=np.int64).ravel()
    if t.shape[0] != n_rows:
        raise ValueError(f"got {t.shape[0]} targets for {n_rows} rows of predictions")
    return t


def topk_accuracy(scores: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy from an (N, C) score matrix (higher is better) and true class indices.

    Ties count against the prediction: the rank of the true class is 1 + the number of *other*
    classes scoring greater than *or equal to* it, and a hit at k means rank <= k. So constant
    scores give accuracy 0 for every k < C (no credit for a coin flip), and 1 for k >= C.
    """
    s = _as_array(scores, dtype=None)
    if s.ndim != 2:
        raise ValueError(f"scores must be an (N, C) matrix, got shape {s.shape}")
    t = _checked_targets(targets, s.shape[0])
    if t.size == 0:
        raise ValueError("no predictions given: the evaluation set is empty")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"targets must lie in [0, {s.shape[1]}), got min {t.min()} max {t.max()}")
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise ValueError("scores contain NaN")
    ranks = np.empty(s.shape[0], dtype=np.int64)
    for start in range(0, s.shape[0], _SCORE_CHUNK_ROWS):  # bounded memory for 34k-city score matrices
        block = s[start : start + _SCORE_CHUNK_ROWS]
        true = block[np.arange(block.shape[0]), t[start : start + _SCORE_CHUNK_ROWS]]
        ranks[start : start + block.shape[0]] = (block >= true[:, None]).sum(axis=1)  # includes itself
    return {int(k): float((ranks <= k).mean()) for k in ks}


def topk_accuracy_ranked(ranked: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy from ranked predictions: ``ranked[i]`` lists class indices, best first."""
    r = _as_array(ranked, dtype=np.int64)
    if r.ndim != 2:
        raise ValueError(f"ranked predictions must be an (N, K) matrix, got shape {r.shape}")
    t = _checked_targets(targets, r.shape[0])
    if t.size == 0:
        raise ValueError("no predictions given: the evaluation set is empty")
    out = {}
    for k in ks:
        if k > r.shape[1]:
            raise ValueError(f"top-{k} accuracy needs at least {k} ranked predictions per image, got {r.shape[1]}")
        out[int(k)] = float((r[:, :k] == t[:, None]).any(axis=1).mean())
    return out


@dataclass
class CountryConfusion:
    """Counts ``counts[i, j]`` of images of true country ``countries[i]`` predicted as ``countries[j]``."""

    countries: list[str]
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.counts) / self.total) if self.total else 0.0

    def per_country(self) -> list[dict[str, Any]]:
        """One row per true country (most images first): images, correct, accuracy, top confusion."""
        rows = []
        for i, name in enumerate(self.countries):
            n = int(self.counts[i].sum())
            if n == 0:
                continue
            wrong = self.counts[i].copy()
            wrong[i] = 0
            j = int(wrong.argmax())
            rows.append({
                "country": name, "images": n, "correct": int(self.counts[i, i]),
                "accuracy": float(self.counts[i, i] / n),
                "confused_with": self.countries[j] if wrong[j] > 0 else "",
                "confused_count": int(wrong[j]),
            })
        rows.sort(key=lambda r: (-r["images"], r["country"]))
        return rows

    def to_markdown(self, top: int | None = None) -> str:
        """Per-country Markdown table (``top`` limits it to the countries with most images)."""
        rows = self.per_country()[:top]
        lines = ["| country | images | correct | accuracy | most confused with |", "|---|---:|---:|---:|---|"]
        for r in rows:
            conf = f"{r['confused_with']} ({r['confused_count']})" if r["confused_count"] else "-"
            lines.append(f"| {r['country']} | {r['images']} | {r['correct']} | {100 * r['accuracy']:.1f} % | {conf} |")
        lines.append(f"| **all** | {self.total} | {int(np.trace(self.counts))} | {100 * self.accuracy:.1f} % | |")
        return "\n".join(lines)

    def to_text(self, top: int | None = None) -> str:
        """The same table in fixed-width plain text for a terminal."""
        rows = self.per_country()[:top]
        width = max([len("country"), len("all")] + [len(r["country"]) for r in rows])
        lines = [f"{'country':<{width}}  {'images':>7}  {'correct':>7}  {'acc %':>6}  most confused with"]
        for r in rows:
            conf = f"{r['confused_with']} ({r['confused_count']})" if r["confused_count"] else "-"
            lines.append(f"{r['country']:<{width}}  {r['images']:>7}  {r['correct']:>7}  {100 * r['accuracy']:>6.1f}  {conf}")
        lines.append(f"{'all':<{width}}  {self.total:>7}  {int(np.trace(self.counts)):>7}  {100 * self.accuracy:>6.1f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"countries": list(self.countries), "counts": self.counts.astype(int).tolist()}


def country_confusion(true_countries: Sequence[str], predicted_countries: Sequence[str]) -> CountryConfusion:
    """Confusion counts over the union of true and predicted countries, sorted by display name.

    Countries are compared by identity (:func:`progeo.geo.countries.country_key`: ``"USA"`` is
    ``"United States"``) and shown under their display name; unknown names as first spelled.
    """
    true_list, pred_list = [str(c) for c in true_countries], [str(c) for c in predicted_countries]
    if len(true_list) != len(pred_list):
        raise ValueError(f"got {len(true_list)} true countries but {len(pred_list)} predictions")
    shown: dict[str, str] = {}  # identity -> display name
    key_of = {c: country_key(c) for c in dict.fromkeys(true_list + pred_list)}
    for c, k in key_of.items():
        shown.setdefault(k, country_name(c))
    names = sorted(set(shown.values()))
    position = {n: i for i, n in enumerate(names)}
    index = {c: position[shown[k]] for c, k in key_of.items()}
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(counts, ([index[c] for c in true_list], [index[c] for c in pred_list]), 1)
    return CountryConfusion(countries=names, counts=counts)


def _threshold_key(t: float) -> str:
    return f"within_{int(t) if float(t).is_integer() else t}km"


def geo_metrics(
    *,
    true_lat: Any = None,
    true_lon: Any = None,
    pred_lat: Any = None,
    pred_lon: Any = None,
    scores: Any = None,
    ranked: Any = None,
    targets: Any = None,
    true_countries: Sequence[str] | None = None,
    pred_countries: Sequence[str] | None = None,
    ks: Sequence[int] = (1, 5),
    thresholds_km: Sequence[float] = DEFAULT_THRESHOLDS_KM,
) -> dict[str, Any]:
    """All metrics of a run in one flat, JSON-serialisable dict; each group is optional.

    Keys: ``n_images``; with ``targets`` and ``scores`` or ``ranked``: ``top1``, ``top5``...;
    with coordinates: ``median_km``, ``mean_km``, ``within_1km``... (fractions) and
    ``thresholds_km``; with countries: ``country_accuracy``.
    """
    out: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    if targets is not None:
        if (scores is None) == (ranked is None):
            raise ValueError("give targets with exactly one of scores= or ranked=")
        acc = topk_accuracy(scores, targets, ks) if scores is not None else topk_accuracy_ranked(ranked, targets, ks)
        out.update({f"top{k}": v for k, v in acc.items()})
        sizes["targets"] = int(_as_array(targets, dtype=np.int64).size)
    coords = (true_lat, true_lon, pred_lat, pred_lon)
    if any(c is not None for c in coords):
        if any(c is None for c in coords):
            raise ValueError("distance metrics need all of true_lat, true_lon, pred_lat and pred_lon")
        lats = [_as_array(c).ravel() for c in coords]
        if len({x.size for x in lats}) != 1:
            raise ValueError(f"coordinate arrays differ in length: {[x.size for x in lats]}")
        d = _checked_distances(haversine_km(*lats))
        out["median_km"] = float(np.median(d))
        out["mean_km"] = float(d.mean())
        out.update({_threshold_key(t): v for t, v in share_within_km(d, thresholds_km).items()})
        out["thresholds_km"] = [float(t) for t in thresholds_km]
        sizes["coordinates"] = int(d.size)
    if true_countries is not None or pred_countries is not None:
        if true_countries is None or pred_countries is None:
            raise ValueError("country accuracy needs both true_countries and pred_countries")
        conf = country_confusion(true_countries, pred_countries)
        out["country_accuracy"] = conf.accuracy
        sizes["countries"] = conf.total
    if not sizes:
        raise ValueError("geo_metrics got nothing to evaluate: pass targets, coordinates or countries")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"inputs differ in number of images: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("no images to evaluate: the evaluation set is empty")
    return {"n_images": n, **out}
