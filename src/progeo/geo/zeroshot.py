"""Zero-shot GEM: classify photos into candidate cities or countries by CLIP image-text similarity.

Each candidate place gets one text per geo-contextualised template (a city with its country:
"a street view photo taken in {city}, {country}."); its text feature is the prompt ensemble
of those texts (each text feature L2-normalized, averaged, renormalized: :func:`ensemble_text_features`),
and an image is scored against every place by cosine similarity (:func:`zeroshot_scores`). The
places' text features are cached on disk beside the image features, keyed by the model's text
weights and the exact texts (:mod:`progeo.geo.text_features`), so repeated runs over other
images with the same model and places skip the text encoding.

Country level, two modes (``country_mode``):

``"aggregate"`` (the default)
    score the candidate *cities* and give each country the ``max`` (or ``logsumexp``) of its
    cities' scores. It keeps the geographic context of the city prompts (a country is
    recognised through what its cities look like, "Kyoto, Japan" rather than "Japan"), and
    the predicted coordinates are those of the best city of the predicted country, so the km
    metrics stay at city resolution. ``max`` is the default reduction because ``logsumexp``
    grows with the number of cities, favouring countries with many candidates.
``"prompts"``
    one ensemble of country templates per country ("a street view photo taken in {country}.");
    the predicted coordinates are those of the country's medoid city (the candidate with the
    smallest total distance to the country's other candidates).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progeo.errors import ConfigError
from progeo.geo.features import FeatureOptions
from progeo.geo.places import PlaceList, load_candidate_places
from progeo.geo.report import ClassTable, GemRun, Predictions, evaluate_labelled, rank_top_k, true_classes
from progeo.geo.templates import default_templates, load_templates, render_texts
from progeo.geo.text_features import cached_class_text_features, encode_class_texts, ensemble_text_features  # noqa: F401

log = logging.getLogger(__name__)

COUNTRY_MODES = ("aggregate", "prompts")
COUNTRY_REDUCTIONS = ("max", "logsumexp")
LOGSUMEXP_SCALE = 100.0  # CLIP's logit scale: logsumexp over 100 * cosine, divided back by 100
_CHUNK = 2048


def zeroshot_scores(image_features: np.ndarray, class_features: np.ndarray) -> np.ndarray:
    """Cosine similarity (N, C) of image features (N, D) with class text features (C, D)."""
    a = np.asarray(image_features, dtype=np.float32)
    b = np.asarray(class_features, dtype=np.float32)
    if a.shape[-1] != b.shape[-1]:
        raise ConfigError(f"image features are {a.shape[-1]}-d but text features {b.shape[-1]}-d: not the same model")
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


def aggregate_country_scores(city_scores: np.ndarray, city_country: np.ndarray, n_countries: int,
                             reduce: str = "max", scale: float = LOGSUMEXP_SCALE) -> np.ndarray:
    """Country scores (N, K) from city scores (N, P): max, or ``logsumexp(scale * s) / scale``, per country.

    ``city_country[p]`` is the country index of city ``p``; every country needs a city.
    """
    if reduce not in COUNTRY_REDUCTIONS:
        raise ConfigError(f"country reduction {reduce!r} is not one of {', '.join(COUNTRY_REDUCTIONS)}")
    s = np.asarray(city_scores, dtype=np.float64)
    cc = np.asarray(city_country, dtype=np.int64)
    order = np.argsort(cc, kind="stable")
    counts = np.bincount(cc, minlength=n_countries)
    if (counts == 0).any():
        raise ConfigError(f"countries without a candidate city: indices {np.flatnonzero(counts == 0).tolist()}")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    grouped = s[:, order]
    top = np.maximum.reduceat(grouped, starts, axis=1)
    if reduce == "max":
        return top.astype(np.float32)
    spread = np.exp(scale * (grouped - np.repeat(top, counts, axis=1)))
    return (top + np.log(np.add.reduceat(spread, starts, axis=1)) / scale).astype(np.float32)


@dataclass
class ZeroShotClassifier:
    """Text features of the candidates and the rule that turns image features into predictions."""

    classes: ClassTable  # output classes: cities, or countries at country level
    text_features: np.ndarray  # (P, D): one row per city (city level, aggregate) or per country (prompts)
    places: PlaceList  # the candidate cities
    country_mode: str = "aggregate"
    reduce: str = "max"
    templates: tuple[str, ...] = ()
    city_country: np.ndarray | None = None  # country class of each city (aggregate mode)
    text_cache_file: Path | None = None  # where the text features are cached (None: not cached)
    text_cache_hit: bool = False  # True when they were read from the cache

    @property
    def level(self) -> str:
        return self.classes.level

    def predict(self, features: np.ndarray, paths: Sequence[str], k: int = 5) -> Predictions:
        """Top-``max(k, 5)`` classes of each image (cosine scores; aggregated ones at country level)."""
        n, width = len(features), min(max(k, 5), len(self.classes))
        idx = np.empty((n, width), dtype=np.int64)
        val = np.empty((n, width), dtype=np.float32)
        lat, lon = np.empty(n), np.empty(n)
        for s in range(0, n, _CHUNK):
            sims = zeroshot_scores(features[s : s + _CHUNK], self.text_features)
            aggregate = self.level == "country" and self.country_mode == "aggregate"
            scores = aggregate_country_scores(sims, self.city_country, len(self.classes), self.reduce) if aggregate else sims
            idx[s : s + _CHUNK], val[s : s + _CHUNK] = rank_top_k(scores, width)
            best = idx[s : s + _CHUNK, 0]
            if aggregate:  # the best city of the predicted country
                city = np.where(self.city_country[None, :] == best[:, None], sims, -np.inf).argmax(axis=1)
                lat[s : s + _CHUNK], lon[s : s + _CHUNK] = self.places.lats[city], self.places.lons[city]
            else:
                lat[s : s + _CHUNK], lon[s : s + _CHUNK] = self.classes.lat[best], self.classes.lon[best]
        return Predictions(self.classes, [str(p) for p in paths], idx, val, lat, lon, "cosine")


def build_zeroshot_classifier(clip, places: PlaceList, level: str = "city", templates: Sequence[str] | None = None,
                              country_mode: str = "aggregate", reduce: str = "max", device: str = "cpu",
                              batch_size: int = 256, *, cache_dir: str | os.PathLike | None = None,
                              cache: bool = True) -> ZeroShotClassifier:
    """Encode the candidates' prompt ensembles. ``templates`` are city templates, or country templates
    in ``country_mode="prompts"``; ``None`` takes the built-in set. The text features are read from
    or written to the cache in ``cache_dir`` (default: the feature cache folder) unless ``cache=False``."""
    if level not in ("city", "country"):
        raise ConfigError(f"unknown level {level!r}; choose city or country")
    if country_mode not in COUNTRY_MODES:
        raise ConfigError(f"unknown country mode {country_mode!r}; choose one of {', '.join(COUNTRY_MODES)}")
    if len(places) == 0:
        raise ConfigError("no candidate places")
    classes = ClassTable.from_places(places, level)
    prompts = level == "country" and country_mode == "prompts"
    text_level = "country" if prompts else "city"
    templates = tuple(templates) if templates is not None else default_templates(text_level)
    subjects = classes.names if prompts else places.places
    text = cached_class_text_features(clip, render_texts(templates, subjects, text_level), cache_dir=cache_dir,
                                      cache=cache, device=device, batch_size=batch_size)
    city_country = None
    if level == "country" and not prompts:
        city_country = classes.country_index(places.countries, places.source)
    log.info("zero-shot %s classifier over %d classes (%d %s texts each%s)", level, len(classes), len(templates),
             text_level, ", from the cache" if text.hit else "")
    return ZeroShotClassifier(classes, text.features, places, country_mode, reduce, templates, city_country, text.file,
                              text.hit)


@dataclass
class ZeroShotConfig(FeatureOptions):
    """``progeo zeroshot``: GEM zero-shot classification of a folder or a labelled CSV of images."""

    model: str = ""  # open_clip ARCH[:TAG], e.g. ViT-B-32:openai, or tiny-vit with --weights
    weights: str | None = None  # local weights file (e.g. RUN/clip.safetensors of progeo pretrain)
    images: str = ""  # folder of images, or labels CSV (IM2GPS3k, Place Pulse or synthetic labels.csv)
    images_dir: str | None = None  # folder the CSV's image paths are relative to (default: the CSV's folder)
    flavour: str | None = None  # labels CSV flavour (default: detected from the header)
    places: str | None = None  # places CSV, world:N, or a synthetic world (default: world cities >= min_population)
    min_population: int = 100_000
    level: str = "city"
    country_mode: str = "aggregate"
    country_reduce: str = "max"
    templates: str | None = None  # template file, one per line (default: the built-in set)
    top_k: int = 5
    out_dir: str | None = None
    predictions_format: str = "csv"
    device: str = "auto"  # cache_dir: image and text feature cache (default: ~/.cache/progeo/features)
    text_cache: bool = True  # False: encode the places' texts every run (neither read nor write the cache)


def zeroshot_run(gem, classifier: ZeroShotClassifier, paths: Sequence[str], features, labels=None, name: str = "zero-shot",
                 top_k: int = 5) -> GemRun:
    """Predictions (and metrics when ``labels`` are given) of already computed image features."""
    pred = classifier.predict(features.features, [paths[i] for i in features.kept], top_k)
    metrics = None
    if labels is not None:
        targets, countries = true_classes(labels, classifier.classes, classifier.places)
        metrics = evaluate_labelled(pred, labels, features.kept, targets, countries)
    info: dict[str, Any] = {"model": gem.spec.to_dict(), "level": classifier.level, "templates": list(classifier.templates),
                            "candidates": classifier.places.source, "candidate_places": len(classifier.places)}
    if classifier.level == "country":
        info.update(country_mode=classifier.country_mode, country_reduce=classifier.reduce)
    return GemRun(name, pred, metrics, list(features.skipped), info, top_k)


def run_zeroshot(cfg: ZeroShotConfig) -> GemRun:
    """Load the model and candidates, classify the images, evaluate against labels, write ``out_dir``."""
    from progeo.device import resolve_device
    from progeo.geo.features import load_gem_model
    from progeo.geo.report import read_images_input

    if cfg.level not in ("city", "country"):
        raise ConfigError(f"--level {cfg.level!r}: choose city or country")
    if cfg.predictions_format not in ("csv", "json"):
        raise ConfigError(f"predictions format {cfg.predictions_format!r}: choose csv or json")
    paths, labels = read_images_input(cfg.images, cfg.images_dir, cfg.flavour)
    places = load_candidate_places(cfg.places, cfg.min_population)
    if labels is not None:  # label errors (unknown places...) before any model work
        true_classes(labels, ClassTable.from_places(places, cfg.level), places)
    text_level = "country" if cfg.level == "country" and cfg.country_mode == "prompts" else "city"
    templates = load_templates(cfg.templates, text_level) if cfg.templates else None
    device = str(resolve_device(cfg.device))
    gem = load_gem_model(cfg.model, cfg.weights, device)
    classifier = build_zeroshot_classifier(gem.clip, places, cfg.level, templates, cfg.country_mode, cfg.country_reduce,
                                           device, cfg.batch_size, cache_dir=cfg.cache_dir, cache=cfg.text_cache)
    feats = dataclasses.replace(cfg, device=device).features(gem, paths)
    run = zeroshot_run(gem, classifier, paths, feats, labels, f"zero-shot {cfg.level}", cfg.top_k)
    if cfg.out_dir:
        run.write(cfg.out_dir, cfg.predictions_format)
    return run
