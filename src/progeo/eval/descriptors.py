"""Descriptors of image files or decoded images, in batches, for evaluation and localization.

Files are decoded by :func:`progeo.data.images.iter_image_batches` (reduced-size JPEG
decoding, parallel workers, the ``on_bad_image`` policy) and described by the model's
``describe`` (the contract of :class:`progeo.models.GeoLocalizer`: uint8 batches in, float32
B x D numpy out, ``descriptor_dim``, ``image_size``). With ``save_dir`` the rows are written to a
float16 memory-mapped descriptors folder (:mod:`progeo.eval.descriptors_io`) as they come, so a
database of millions never has to fit in memory; the images that could not be decoded are
recorded in its metadata (``extra``: ``skipped_paths``, ``skipped_utms``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from progeo.errors import DatasetError


@dataclass
class Described:
    """Descriptors of one folder (the database, a query folder, photos to localize).

    ``descriptors[r]`` describes ``paths[rows[r]]``; ``skipped`` lists the positions of the
    images that could not be decoded. ``utms`` (N x 2, UTM east/north metres) covers every path.
    """

    descriptors: np.ndarray
    rows: np.ndarray
    paths: Sequence[str]
    utms: np.ndarray
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seconds: float = 0.0
    model: str = ""

    @property
    def skipped_paths(self) -> list[str]:
        return [self.paths[int(i)] for i in self.skipped]


def describe_files(model, paths: Sequence[str], *, batch_size: int = 64, device: str | torch.device = "cpu",
                   num_workers: int = 0, on_bad_image: str = "fail", image_size=None, resize_mode: str = "resize",
                   amp: bool = True, channels_last: bool | None = None, progress: bool = True,
                   desc: str = "descriptors", utms: np.ndarray | None = None,
                   save_dir: str | os.PathLike | None = None, meta=None, native: bool = False,
                   keep_in_memory: bool = False) -> Described:
    """Describe image files in batches (``image_size``: the model's when None; ``native``: every
    image at its own size, consecutive images of one size batched together).

    Returns a float32 array. With ``save_dir`` (and ``meta``, a
    :class:`~progeo.eval.descriptors_io.DescriptorsMeta`) the rows are also saved in float16 and,
    unless ``keep_in_memory``, the returned descriptors are that memory map (for sets too large
    for memory; searching them differs from the float32 ones by float16 rounding).
    """
    from progeo.data.images import iter_image_batches
    from progeo.eval.descriptors_io import DescriptorsWriter

    batches = iter_image_batches(paths, None if native else image_size or model.image_size, batch_size=batch_size,
                                 num_workers=num_workers, on_bad_image=on_bad_image, resize_mode=resize_mode,
                                 device=device)
    utms = np.zeros((len(paths), 2)) if utms is None else np.asarray(utms, dtype=np.float64)
    writer = None
    if save_dir is not None:
        writer = DescriptorsWriter(save_dir, len(paths), model.descriptor_dim, meta)
    out = None if writer and not keep_in_memory else np.zeros((len(paths), model.descriptor_dim), dtype=np.float32)
    rows, count, start = [], 0, time.perf_counter()
    try:
        with _inference(model, device, channels_last):
            for images, indices in tqdm(batches, desc=desc, unit="batch", disable=not progress):
                d = model.describe(images, device=device, amp=amp, channels_last=channels_last)
                idx = indices.numpy()
                if writer:
                    writer.append(d, [paths[i] for i in idx], utms[idx])
                if out is not None:
                    out[count : count + len(idx)] = d
                rows.append(idx)
                count += len(idx)
        skipped = np.asarray(batches.skipped_indices, dtype=np.int64)
        if writer:
            extra = {**meta.extra, "skipped_paths": [paths[i] for i in skipped], "skipped_utms": utms[skipped].tolist()}
            writer.meta = dataclasses.replace(meta, extra=extra)
            saved = writer.close().descriptors
            out = saved if out is None else out
    except BaseException:
        if writer:
            writer.abort()
        raise
    rows_arr = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return Described(out[:count], rows_arr, paths, utms, skipped, time.perf_counter() - start, getattr(meta, "model", ""))


def _inference(model, device, channels_last):
    """The model ready on ``device`` for many batches (:meth:`GeoLocalizer.inference`), restored after."""
    return model.inference(device, channels_last) if hasattr(model, "inference") else contextlib.nullcontext()


def are_paths(images) -> bool:
    """Whether ``images`` is a path or a non-empty list of paths (not decoded images)."""
    path = (str, os.PathLike)
    return isinstance(images, path) or (isinstance(images, (list, tuple)) and bool(images)
                                        and all(isinstance(i, path) for i in images))


def describe(model, images, *, batch_size: int = 64, device: str | torch.device | None = None, num_workers: int = 0,
             amp: bool = True, channels_last: bool | None = None, progress: bool = False) -> np.ndarray:
    """Descriptors (N x D float32) of images: a path (image file or folder, its images in natural
    order), a list of paths, a list of PIL images, or a tensor / array of images (uint8, or
    normalized floats: see :meth:`GeoLocalizer.describe`). Files are decoded and resized to the
    model's size and must all be readable. ``device``: None for where the model is.

    The model is left as it was: train / eval mode, device and memory layout are restored."""
    from progeo.data.image_lists import expand_photo_paths
    from progeo.models.inference import as_uint8_batch

    dev = device if device is not None else getattr(model, "device", "cpu")
    if are_paths(images):
        return describe_files(model, expand_photo_paths(images), batch_size=batch_size, device=dev,
                              num_workers=num_workers, amp=amp, channels_last=channels_last, progress=progress,
                              desc="describing images").descriptors
    if isinstance(images, (list, tuple)):
        images = as_uint8_batch(images, model.image_size)
    with _inference(model, dev, channels_last):
        out = [model.describe(images[s : s + batch_size], device=dev, amp=amp, channels_last=channels_last)
               for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.descriptor_dim), dtype=np.float32)


def load_described(folder: str | os.PathLike) -> Described:
    """A saved descriptors folder (with UTMs) as :class:`Described`; its skipped images come last."""
    from progeo.eval.descriptors_io import load_descriptors

    saved = load_descriptors(folder)
    if saved.utms is None:
        raise DatasetError(f"{folder} was saved without UTM coordinates, so recall cannot be computed; "
                           "save it again with `progeo eval --save-descriptors`")
    skipped_paths = list(saved.meta.extra.get("skipped_paths", []))
    skipped_utms = np.asarray(saved.meta.extra.get("skipped_utms", []), dtype=np.float64).reshape(-1, 2)
    n = len(saved)
    return Described(saved.descriptors, np.arange(n), list(saved.paths) + skipped_paths,
                     np.concatenate([np.asarray(saved.utms), skipped_utms]),
                     np.arange(n, n + len(skipped_paths)), model=saved.meta.model)
