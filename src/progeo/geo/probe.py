"""Linear-probe GEM: a linear classifier on frozen, cached CLIP image features of labelled images.

Multinomial logistic regression (cross-entropy + ``l2 * ||W||^2``, bias not penalised), trained
with torch by full-batch L-BFGS on the cached features, which are L2-normalized (as CLIP's)
and then standardized with the training mean and standard deviation. The strength ``l2`` is
chosen on a validation split from a small grid (1e-6 ... 1e-1, warm-started from the strongest;
each value's val accuracy is logged and saved; ties go to the stronger regularization; a best
value at an edge of the grid widens it by decades past that edge, with a warning).
Validation is either an explicit labelled list, which stays held-out, or a stratified
``val_fraction`` of the training list, which is folded back for a final fit at the chosen ``l2``.

Classes are the cities (``(city, country)`` labels, or with candidate ``places`` the matched or,
without a city label, the nearest candidate place) or the countries of the training images.
A class is placed, for the km metrics, at its candidate place's coordinates, or else at the
medoid of its training images' positions (the one with the smallest total distance to the others).

Saved as a folder: ``probe.safetensors`` (weight, bias, feature_mean, feature_std) and
``probe.json`` (classes with country/lat/lon, the model spec with the image tower's hash,
the feature normalization, the chosen l2 and the grid's val accuracies).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progeo.errors import CheckpointError, ConfigError, DatasetError, reading
from progeo.geo.features import ModelSpec
from progeo.geo.labelled_images import LabelledImages, image_countries, match_places
from progeo.geo.countries import country_key, country_name
from progeo.geo.places import PlaceList, nearest_places, place_key
from progeo.geo.report import ClassTable, Predictions, geo_medoid, rank_top_k

log = logging.getLogger(__name__)

REG_GRID: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
WIDEN_STEPS = 3  # values tried past an edge of the grid when the best l2 lies on it
PROBE_FORMAT = "progeo-linear-probe"
PROBE_VERSION = 1
WEIGHTS_NAME, META_NAME = "probe.safetensors", "probe.json"
_TENSORS = ("weight", "bias", "feature_mean", "feature_std")
SMALL_PROBLEM = 1 << 25  # images x dims x classes below which CPU training runs on one thread


@contextlib.contextmanager
def _threads_for(x, n_classes: int):
    """One intra-op thread for small CPU problems: their ops are too short to split, and 2+ threads
    stall on shared cores (measured 100x slower for a 120 x 4 problem on a busy 2-core machine)."""
    import torch

    small = x.device.type == "cpu" and x.shape[0] * x.shape[1] * n_classes < SMALL_PROBLEM
    threads = torch.get_num_threads()
    if small and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small and threads > 1:
            torch.set_num_threads(threads)


def train_logistic_regression(x, y, n_classes: int, l2: float, *, init=None, max_iter: int = 200):
    """Full-batch L-BFGS on ``mean CE(x @ W.T + b, y) + l2 * ||W||^2``; returns ``(W, b)`` tensors."""
    with _threads_for(x, n_classes):
        return _lbfgs(x, y, n_classes, l2, init, max_iter)


def _lbfgs(x, y, n_classes: int, l2: float, init, max_iter: int):
    import torch
    import torch.nn.functional as F

    w = (init[0].clone() if init is not None else torch.zeros(n_classes, x.shape[1], device=x.device)).requires_grad_()
    b = (init[1].clone() if init is not None else torch.zeros(n_classes, device=x.device)).requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise ConfigError(f"the linear probe diverged at l2={l2:g} (NaN weights); check the features for NaN")
    return w.detach(), b.detach()


def select_l2(x_train, y_train, x_val, y_val, n_classes: int, grid: Sequence[float] = REG_GRID, max_iter: int = 200,
              widen: int = WIDEN_STEPS):
    """Fit every ``l2`` of ``grid`` (strongest first, warm-started); return (best l2, {l2: val acc}, (W, b)).

    A best ``l2`` at an edge of a grid of two values or more means the optimum may lie beyond it:
    the grid is widened by factors of 10 past that edge (up to ``widen`` values, warm-started from
    the best fit, stopping at the first value that is not strictly better), with a warning; another
    warning says when the best is still at the edge.
    """
    if not grid:
        raise ConfigError("the regularization grid is empty; give at least one l2 value")
    best, accs, params, state = None, {}, None, None

    def fit(l2: float, init):
        state = train_logistic_regression(x_train, y_train, n_classes, l2, init=init, max_iter=max_iter)
        accs[l2] = float(((x_val @ state[0].T + state[1]).argmax(1) == y_val).float().mean())
        log.info("linear probe: l2=%g val top-1 %.2f%%", l2, 100 * accs[l2])
        return state

    for l2 in sorted({float(v) for v in grid}, reverse=True):
        state = fit(l2, state)
        if best is None or accs[l2] > accs[best]:
            best, params = l2, state
    at_edge = lambda: len(accs) > 1 and best in (min(accs), max(accs))  # noqa: E731
    if at_edge() and widen > 0:
        edge, step, first = ("weakest", 0.1, best) if best == min(accs) else ("strongest", 10.0, best)
        for _ in range(widen):
            l2 = float(f"{best * step:.6g}")
            state = fit(l2, params)
            if not accs[l2] > accs[best]:
                break
            best, params = l2, state
        log.warning("linear probe: the best l2 %g was the %s value of the grid; widened the grid to %s: chose l2=%g",
                    first, edge, ", ".join(f"{v:g}" for v in sorted(accs)), best)
    if at_edge():
        log.warning("linear probe: the best l2 %g is at the edge of the %sgrid; pass --grid with values beyond it",
                    best, "widened " if widen > 0 else "")
    log.info("linear probe: chose l2=%g (val top-1 %.2f%%)", best, 100 * accs[best])
    return best, accs, params


def stratified_split(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): ``fraction`` of each class to val, at least one image left in train."""
    if not 0 < fraction < 1:
        raise ConfigError(f"val_fraction={fraction} must lie in (0, 1), e.g. 0.2")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        val.extend(rows[: min(int(round(fraction * len(rows))), len(rows) - 1)])
    val = np.sort(np.asarray(val, dtype=np.int64))
    if val.size == 0:
        raise DatasetError(f"a val fraction of {fraction} leaves no validation image (too few images per class); "
                           f"give a larger fraction, more images or an explicit validation list")
    return np.setdiff1d(np.arange(len(y)), val), val


def probe_classes(labels: LabelledImages, level: str, places: PlaceList | None = None) -> tuple[ClassTable, np.ndarray]:
    """The classes of the training images and each image's class index (see the module docstring)."""
    src = f"the probe's training labels ({labels.source})"
    if level == "city":
        if places is not None:
            idx = (match_places(labels.cities, labels.countries, places, labels.source, labels.lines)
                   if any(labels.cities) else nearest_places(labels.lat, labels.lon, places)[0])
            used = np.unique(idx)
            table = ClassTable("city", [places[i].name for i in used], [places[i].country for i in used],
                               places.lats[used], places.lons[used], src)
            return table, np.searchsorted(used, idx)
        if not any(labels.cities):
            raise DatasetError(f"{labels.source}: no city labels; pass candidate places (--places) so that each "
                               f"image's class is its nearest candidate place")
        keys = [(country_key(k), place_key(c)) for c, k in zip(labels.cities, labels.countries)]  # USA = United States
        first = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        order = sorted(first, key=lambda k: (place_key(country_name(labels.countries[first[k]])), k[1]))
        names = [labels.cities[first[k]] for k in order]
        countries = [country_name(labels.countries[first[k]]) for k in order]
    elif level == "country":
        per_image = image_countries(labels, places)
        keys = [country_key(c) for c in per_image]  # USA = United States
        first = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        order = sorted(first, key=lambda k: place_key(country_name(per_image[first[k]])))
        names = countries = [country_name(per_image[first[k]]) for k in order]
    else:
        raise ConfigError(f"unknown level {level!r}; choose city or country")
    index = {k: i for i, k in enumerate(order)}
    targets = np.array([index[k] for k in keys], dtype=np.int64)
    coords = [geo_medoid(labels.lat[targets == c], labels.lon[targets == c]) for c in range(len(order))]
    return ClassTable(level, list(names), list(countries), np.array([c[0] for c in coords]),
                      np.array([c[1] for c in coords]), src), targets


@dataclass
class LinearProbe:
    """A fitted probe: ``logits = standardize(l2normalize(f)) @ weight.T + bias``."""

    classes: ClassTable
    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,)
    feature_mean: np.ndarray  # (D,)
    feature_std: np.ndarray  # (D,)
    model: ModelSpec
    l2: float
    val_accuracy: dict[float, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def check_model(self, spec: ModelSpec) -> None:
        """Raise CheckpointError unless ``spec`` is the model the probe was fit on."""
        where = self.source or "the probe"
        if spec.embed_dim != self.weight.shape[1]:
            raise CheckpointError(
                f"{where} was fit on {self.weight.shape[1]}-d features of {self.model.describe()}, but "
                f"{spec.describe()} gives {spec.embed_dim}-d features; evaluate with the probe's model "
                f"(--model {self.model.model}{' --weights ' + self.model.weights if self.model.weights else ''})")
        if spec.visual_sha1 != self.model.visual_sha1:
            raise CheckpointError(
                f"{where} was fit on features of {self.model.describe()} (image tower {self.model.visual_sha1[:12]}), "
                f"but {spec.describe()} has other image-tower weights ({spec.visual_sha1[:12]}); its features "
                f"would be meaningless to the probe: evaluate with the probe's model, or fit a probe for this one")

    def logits(self, features: np.ndarray) -> np.ndarray:
        f = np.asarray(features, dtype=np.float32)
        if f.shape[-1] != self.weight.shape[1]:
            raise CheckpointError(f"{self.source or 'the probe'} expects {self.weight.shape[1]}-d features, "
                                  f"got {f.shape[-1]}-d: features of another model")
        return ((f - self.feature_mean) / self.feature_std) @ self.weight.T + self.bias

    def predict(self, features: np.ndarray, paths: Sequence[str], k: int = 5, chunk: int = 8192) -> Predictions:
        """Top-``max(k, 5)`` classes with softmax probabilities; coordinates of the top-1 class."""
        n, width = len(features), min(max(k, 5), len(self.classes))
        idx, val = np.empty((n, width), dtype=np.int64), np.empty((n, width), dtype=np.float32)
        for s in range(0, n, chunk):
            z = self.logits(features[s : s + chunk])
            p = np.exp(z - z.max(axis=1, keepdims=True))
            idx[s : s + chunk], val[s : s + chunk] = rank_top_k(p / p.sum(axis=1, keepdims=True), width)
        best = idx[:, 0]
        return Predictions(self.classes, [str(p) for p in paths], idx, val, self.classes.lat[best],
                           self.classes.lon[best], "probability")

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``OUT/probe.safetensors`` and ``OUT/probe.json`` (atomically); returns OUT."""
        from safetensors.numpy import save_file

        from progeo.io import atomic_path, write_json_atomic
        from progeo.locks import folder_lock

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; the probe is saved as a folder (probe.safetensors + probe.json)")
        tensors = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float32) for k in _TENSORS}
        with folder_lock(out, flag="--out"):  # one writer: weights and meta of the same probe
            with atomic_path(out / WEIGHTS_NAME) as tmp:
                save_file(tensors, str(tmp), metadata={"format": PROBE_FORMAT})
            write_json_atomic(out / META_NAME, {
                "format": PROBE_FORMAT, "version": PROBE_VERSION, "level": self.classes.level,
                "classes": self.classes.to_json(), "model": self.model.to_dict(),
                "feature_normalization": {"l2_normalize": True,
                                          "standardize": "training mean and std (feature_mean, feature_std)"},
                "l2": self.l2, "val_accuracy": {f"{k:g}": v for k, v in self.val_accuracy.items()}, **self.info})
        return out


def _probe_files(path: Path) -> tuple[Path, Path]:
    if path.is_dir():
        return path / WEIGHTS_NAME, path / META_NAME
    if path.suffix in (".json", ".safetensors"):
        return path.with_name(WEIGHTS_NAME), path.with_name(META_NAME)
    return path / WEIGHTS_NAME, path / META_NAME


def load_probe(path: str | os.PathLike) -> LinearProbe:
    """Load a probe folder written by :meth:`LinearProbe.save` (or either of its two files)."""
    path = Path(path)
    weights_file, meta_file = _probe_files(path)
    fix = "pass the folder written by `progeo probe fit --out`"
    if not path.exists():
        raise CheckpointError(f"probe {path} not found; {fix}")
    if not meta_file.is_file() or not weights_file.is_file():
        raise CheckpointError(f"{path} is not a linear probe: it needs {WEIGHTS_NAME} and {META_NAME}; {fix}")
    refit = "fit it again with `progeo probe fit ... --out DIR`"
    with reading(meta_file, "probe description", refit, CheckpointError):
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != PROBE_FORMAT:
        raise CheckpointError(f"{meta_file} is not a progeo linear probe description (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r}); {fix}")
    if int(meta.get("version", 0)) > PROBE_VERSION:
        raise CheckpointError(f"{meta_file} has probe format version {meta['version']}; this progeo reads up to "
                              f"{PROBE_VERSION}: upgrade progeo")
    from safetensors.numpy import load_file

    with reading(weights_file, "probe weights", refit, CheckpointError):
        tensors = load_file(str(weights_file))
    missing = [k for k in _TENSORS if k not in tensors]
    try:
        classes = ClassTable.from_json(meta["classes"], meta["level"], source=str(path))
        spec = ModelSpec.from_dict(meta["model"], str(meta_file))
        l2 = float(meta["l2"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_file} is incomplete ({exc!r} missing or malformed); {fix}") from exc
    if missing:
        raise CheckpointError(f"{weights_file} lacks tensor(s) {', '.join(missing)}; {fix}")
    w, b = tensors["weight"], tensors["bias"]
    d = w.shape[1] if w.ndim == 2 else -1
    if w.shape != (len(classes), d) or b.shape != (len(classes),) or tensors["feature_mean"].shape != (d,) \
            or tensors["feature_std"].shape != (d,) or d != spec.embed_dim:
        raise CheckpointError(f"{weights_file}: tensor shapes {({k: tuple(v.shape) for k, v in tensors.items()})} do not "
                              f"fit {len(classes)} classes of {spec.embed_dim}-d features in {meta_file}; refit the probe")
    info = {k: v for k, v in meta.items() if k in ("train_images", "val_images", "train_labels", "val_labels", "refit")}
    return LinearProbe(classes, w, b, tensors["feature_mean"], tensors["feature_std"], spec, l2,
                       {float(k): float(v) for k, v in meta.get("val_accuracy", {}).items()}, info, str(path))
