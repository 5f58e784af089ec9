"""Localize new photos against an :class:`~progeo.eval.index.Index` of a geo-tagged database.

:class:`Localizer` ties the model, the index and its coordinates together::

    loc = progeo.Localizer.from_index("my_index")
    for p in loc.localize(["photo.jpg", "more_photos/"], top_k=5):
        print(p.query, p.lat, p.lon, p.confidence)

Position and confidence are :func:`progeo.eval.localize_core.predict_positions`'s.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from progeo.errors import ConfigError
from progeo.eval.confidence import CONFIDENCE_DEPTH
from progeo.data.image_lists import expand_photo_paths
from progeo.eval.descriptors import are_paths, describe, describe_files
from progeo.eval.index import Index
from progeo.eval.localize_core import PhotoPrediction, cosine_scale_scores, predict_positions
from progeo.eval.recall import POSITIVE_DIST_M
from progeo.models.inference import as_uint8_batch


class Localizer:
    """A model + an :class:`Index` of geo-tagged images: photos in, positions out."""

    def __init__(self, model, index: Index, *, positive_dist: float = POSITIVE_DIST_M, device: str = "cpu",
                 batch_size: int = 32, num_workers: int = 0, on_bad_image: str = "fail", progress: bool = False):
        if index.dim != int(model.descriptor_dim):
            raise ConfigError(f"the index holds {index.dim}-d descriptors but the model gives {model.descriptor_dim}-d: "
                              "use the model the index was built with")
        self.model, self.index, self.coordinates, self.metric = model, index, index.coordinates, index.metric
        self.image_size, self.resize_mode = index.image_size, index.info.get("resize_mode", "resize")
        self.positive_dist, self.device = positive_dist, device
        self.batch_size, self.num_workers, self.on_bad_image, self.progress = batch_size, num_workers, on_bad_image, progress
        self.skipped_paths: list[str] = []  # photos of the last call that could not be decoded

    @classmethod
    def from_index(cls, index: Index | str | os.PathLike, *, model=None, device: str = "cpu", mmap: bool = True,
                   metric: str | None = None, **options) -> "Localizer":
        """A localizer over ``index`` (an :class:`Index`, or an index folder); the model is the index's
        own (its saved copy) unless ``model`` is given.

        ``metric``: search with this metric instead of the index's (it is rebuilt in memory, same
        kind, from its descriptors). ``options``: ``batch_size``, ``num_workers``, ``on_bad_image``,
        ``positive_dist``, ``progress``."""
        if not isinstance(index, Index):
            index = Index.load(index, model=model, device=device, mmap=mmap)
        model = model if model is not None else index.model
        if model is None:
            raise ConfigError(f"the index {index.path} was built with a custom model {index.info['model']['ref']!r} "
                              "that was not saved with it: pass it, Localizer.from_index(path, model=...)")
        return cls(model, index.with_metric(metric), device=device, **options)

    def localize(self, images, top_k: int = 5) -> list[PhotoPrediction]:
        """Predicted position, confidence and top-k matches of each photo.

        ``images``: a path (file or folder), a list of paths, or decoded images (a uint8 tensor
        or array B x 3 x H x W / B x H x W x 3 at the index's image size, or a list of PIL images).
        With ``on_bad_image="skip"`` unreadable files are left out (see :attr:`skipped_paths`).
        """
        self.skipped_paths = []
        if are_paths(images):
            return self.localize_files(expand_photo_paths(images), top_k)
        batch = as_uint8_batch(images, self.image_size)
        descriptors = describe(self.model, batch, batch_size=self.batch_size, device=self.device)
        return self._predict(descriptors, [f"image {i}" for i in range(len(batch))], top_k)

    def localize_files(self, paths: Sequence[str], top_k: int = 5) -> list[PhotoPrediction]:
        described = describe_files(self.model, paths, batch_size=self.batch_size, device=self.device,
                                   num_workers=self.num_workers, on_bad_image=self.on_bad_image,
                                   image_size=self.image_size, resize_mode=self.resize_mode, progress=self.progress,
                                   desc="describing photos")
        self.skipped_paths = described.skipped_paths
        return self._predict(described.descriptors, [paths[int(r)] for r in described.rows], top_k)

    def _predict(self, descriptors: np.ndarray, names: list[str], top_k: int) -> list[PhotoPrediction]:
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be at least 1")
        if not len(names):
            return []
        depth = min(max(top_k, CONFIDENCE_DEPTH), len(self.index))  # the confidence always sees 10
        scores, ids = self.index.search(descriptors, depth)
        conf_scores = None
        if self.metric == "l2":  # the confidence's temperature is in cosine units
            conf_scores = cosine_scale_scores(scores, np.linalg.norm(np.asarray(descriptors, dtype=np.float64), axis=1))
        return predict_positions(ids, scores, self.coordinates, names, self.positive_dist, top_k=top_k,
                                 confidence_scores=conf_scores)


def save_match_grid(predictions: Sequence[PhotoPrediction], path: str | os.PathLike, top_k: int = 5,
                    positive_dist: float = POSITIVE_DIST_M, max_rows: int = 50) -> int:
    """Draw each photo, labelled by its file name, with its top-k matches framed by their distance
    to the predicted position (legend in the picture; :func:`progeo.eval.visualize.save_localization_grid`),
    rows in the order of ``predictions``; returns the number of rows drawn."""
    from progeo.eval.visualize import save_localization_grid

    if not predictions:
        raise ConfigError(f"no prediction to draw in {path}: localize at least one photo")
    return save_localization_grid(
        path, [p.query for p in predictions], [os.path.basename(p.query) for p in predictions],
        [[m.path or "" for m in p.matches[:top_k]] for p in predictions],
        [[m.distance_to_prediction_m for m in p.matches[:top_k]] for p in predictions],
        [p.confidence for p in predictions], positive_dist=positive_dist, max_rows=max_rows)
