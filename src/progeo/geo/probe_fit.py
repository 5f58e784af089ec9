"""Fitting and evaluating GEM linear probes (:mod:`progeo.geo.probe`), from lists or from config files.

``fit_probe`` and ``evaluate_probe`` work on :class:`~progeo.geo.labelled_images.LabelledImages`
and a loaded :class:`~progeo.geo.features.GemModel`; ``run_probe_fit`` / ``run_probe_eval``
are what ``progeo probe fit`` / ``progeo probe eval`` call with their config dataclasses.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from progeo.errors import ConfigError, DatasetError
from progeo.geo.features import FeatureOptions, GemModel
from progeo.geo.labelled_images import LabelledImages, read_labelled_images
from progeo.geo.places import PlaceList, load_candidate_places
from progeo.geo.probe import REG_GRID, WIDEN_STEPS, LinearProbe, load_probe, probe_classes, select_l2, stratified_split, \
    train_logistic_regression
from progeo.geo.report import GemRun, evaluate_labelled, true_classes

log = logging.getLogger(__name__)


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0).astype(np.float32), np.maximum(x.std(axis=0), 1e-6).astype(np.float32)


def fit_probe(gem: GemModel, train: LabelledImages, val: LabelledImages | None = None, *, level: str = "city",
              places: PlaceList | None = None, val_fraction: float = 0.2, grid: Sequence[float] = REG_GRID,
              max_iter: int = 200, seed: int = 0, options: FeatureOptions | None = None,
              widen: int = WIDEN_STEPS) -> LinearProbe:
    """Fit a probe on ``train``; ``l2`` chosen on ``val`` (held-out) or on a ``val_fraction`` carve-out (refit);
    ``widen``: values tried past an edge of ``grid`` when the best lies on it (:func:`~progeo.geo.probe.select_l2`)."""
    import torch

    opts = options or FeatureOptions()
    classes, targets = probe_classes(train, level, places)
    if len(classes) < 2:
        raise DatasetError(f"{train.source}: the training images cover only {len(classes)} {level}; a classifier "
                           f"needs at least 2 classes")
    y_val_all = true_classes(val, classes, places)[0] if val is not None else None  # label errors first
    ftr = opts.features(gem, train.paths)
    x, y = ftr.features, targets[ftr.kept]
    if val is not None:
        fva = opts.features(gem, val.paths)
        x_fit, y_fit, x_val, y_val = x, y, fva.features, y_val_all[fva.kept]
    else:
        rows_fit, rows_val = stratified_split(y, val_fraction, seed)
        x_fit, y_fit, x_val, y_val = x[rows_fit], y[rows_fit], x[rows_val], y[rows_val]
    dev = torch.device(opts.device)
    mean, std = _standardizer(x_fit)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64)).to(dev)  # noqa: E731
    l2, accs, (w, b) = select_l2(as_t((x_fit - mean) / std), as_y(y_fit), as_t((x_val - mean) / std), as_y(y_val),
                                 len(classes), grid, max_iter, widen)
    refit = val is None
    if refit:  # the carve-out goes back into training for the final model
        mean, std = _standardizer(x)
        w, b = train_logistic_regression(as_t((x - mean) / std), as_y(y), len(classes), l2, init=(w, b), max_iter=max_iter)
    info = {"train_images": int(len(y)), "val_images": int(len(y_val)), "train_labels": str(train.source),
            "val_labels": str(val.source) if val is not None else f"{val_fraction:g} of the training images",
            "refit": refit, "skipped_images": list(ftr.skipped)}
    log.info("linear probe: %d %s classes, %d training images, l2=%g", len(classes), level, len(y), l2)
    return LinearProbe(classes, w.cpu().numpy(), b.cpu().numpy(), mean, std, gem.spec, l2, accs, info)


def evaluate_probe(probe: LinearProbe, gem: GemModel, paths: Sequence[str], labels: LabelledImages | None = None,
                   places: PlaceList | None = None, *, top_k: int = 5, name: str | None = None,
                   options: FeatureOptions | None = None) -> GemRun:
    """Predictions of the probe for ``paths`` and, with ``labels`` (same order), its metrics."""
    probe.check_model(gem.spec)
    truth = true_classes(labels, probe.classes, places) if labels is not None else None  # label errors first
    feats = (options or FeatureOptions()).features(gem, paths)
    pred = probe.predict(feats.features, [str(paths[i]) for i in feats.kept], top_k)
    metrics = None
    if truth is not None:
        metrics = evaluate_labelled(pred, labels, feats.kept, *truth)
    info = {"model": gem.spec.to_dict(), "probe": probe.source, "l2": probe.l2}
    return GemRun(name or f"linear probe {probe.classes.level}", pred, metrics, list(feats.skipped), info, top_k)


@dataclass
class _FeatureFields(FeatureOptions):
    """How the frozen image features of a probe command are computed (shared by fit and eval)."""

    flavour: str | None = None
    device: str = "auto"


@dataclass
class ProbeFitConfig(_FeatureFields):
    """``progeo probe fit``."""

    model: str = ""  # open_clip ARCH[:TAG], or a backbone with --weights
    weights: str | None = None
    train: str = ""  # labels CSV of the training images
    train_images_dir: str | None = None
    val: str | None = None  # labels CSV of validation images (held-out; default: --val-fraction of train)
    val_images_dir: str | None = None
    val_fraction: float = 0.2
    level: str = "city"
    places: str | None = None  # candidate places (CSV, world:N, or a synthetic world): classes for GPS-only labels
    out: str = ""  # probe folder
    grid: tuple[float, ...] = REG_GRID
    widen: int = WIDEN_STEPS  # values tried past an edge of the grid when the best l2 lies on it (0: never)
    max_iter: int = 200
    seed: int = 0


@dataclass
class ProbeEvalConfig(_FeatureFields):
    """``progeo probe eval``."""

    probe: str = ""
    images: str = ""  # labels CSV (metrics) or folder (predictions only)
    images_dir: str | None = None
    model: str | None = None  # default: the model the probe was fit on
    weights: str | None = None
    places: str | None = None
    top_k: int = 5
    out_dir: str | None = None
    predictions_format: str = "csv"


def _options(cfg) -> FeatureOptions:
    from progeo.device import resolve_device

    return dataclasses.replace(cfg, device=str(resolve_device(cfg.device)))


def _places(spec: str | None) -> PlaceList | None:
    return load_candidate_places(spec) if spec else None


def run_probe_fit(cfg: ProbeFitConfig) -> LinearProbe:
    from progeo.geo.features import load_gem_model

    if not cfg.out:
        raise ConfigError("no output folder for the probe: pass --out DIR")
    if not cfg.train:
        raise ConfigError("no training labels: pass --train labels.csv")
    if cfg.level not in ("city", "country"):
        raise ConfigError(f"--level {cfg.level!r}: choose city or country")
    train = read_labelled_images(cfg.train, cfg.train_images_dir, cfg.flavour)
    val = read_labelled_images(cfg.val, cfg.val_images_dir, cfg.flavour) if cfg.val else None
    opts = _options(cfg)
    gem = load_gem_model(cfg.model, cfg.weights, opts.device)
    probe = fit_probe(gem, train, val, level=cfg.level, places=_places(cfg.places), val_fraction=cfg.val_fraction,
                      grid=cfg.grid, max_iter=cfg.max_iter, seed=cfg.seed, options=opts, widen=cfg.widen)
    probe.source = str(probe.save(cfg.out))
    return probe


def run_probe_eval(cfg: ProbeEvalConfig) -> GemRun:
    from progeo.geo.features import load_gem_model
    from progeo.geo.report import read_images_input

    if cfg.predictions_format not in ("csv", "json"):
        raise ConfigError(f"predictions format {cfg.predictions_format!r}: choose csv or json")
    if cfg.weights and not cfg.model:
        raise ConfigError("--weights needs --model (the architecture they belong to); without both, the probe's "
                          "own model is used")
    probe = load_probe(cfg.probe)
    paths, labels = read_images_input(cfg.images, cfg.images_dir, cfg.flavour)
    places = _places(cfg.places)
    if labels is not None:  # label errors before any model work
        true_classes(labels, probe.classes, places)
    opts = _options(cfg)
    model, weights = (cfg.model, cfg.weights) if cfg.model else (probe.model.model, probe.model.weights)
    gem = load_gem_model(model, weights, opts.device)
    run = evaluate_probe(probe, gem, paths, labels, places, top_k=cfg.top_k, options=opts)
    if cfg.out_dir:
        run.write(cfg.out_dir, cfg.predictions_format)
    return run
