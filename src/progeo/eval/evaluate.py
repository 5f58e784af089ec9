"""Recall@N of a descriptor model on a VG test set: describe, index, search, count.

The small composition the training loop (validation every epoch, test at the end) and the
demo use: descriptors of the database and the queries in batches (decoded with
:mod:`progeo.data.images`, described by ``model.describe``), an exact faiss index
(:mod:`progeo.eval.search`) and recall against the positives within 25 m
(:mod:`progeo.eval.recall`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from progeo.eval.recall import DEFAULT_RECALL_VALUES, RecallResult, compute_recalls_from_positives

log = logging.getLogger(__name__)


def describe_paths(model, paths: Sequence[str], *, batch_size: int = 64, device: str | torch.device = "cpu",
                   num_workers: int = 0, amp: bool = True, channels_last: bool | None = None,
                   progress: bool = True, desc: str = "descriptors") -> np.ndarray:
    """Descriptors (N x D float32) of image files, resized to the model's image size."""
    from progeo.data.images import iter_image_batches

    out = np.zeros((len(paths), model.descriptor_dim), dtype=np.float32)
    batches = iter_image_batches(paths, model.image_size, batch_size=batch_size, num_workers=num_workers,
                                 resize_mode="resize", device=device)
    for images, indices in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        out[indices.numpy()] = model.describe(images, device=device, amp=amp, channels_last=channels_last)
    return out


def describe_images(model, images: torch.Tensor, *, batch_size: int = 64, device: str | torch.device = "cpu",
                    amp: bool = True, channels_last: bool | None = None) -> np.ndarray:
    """Descriptors (N x D float32) of already decoded uint8 images (N x 3 x H x W at the model's size)."""
    out = [model.describe(images[s : s + batch_size], device=device, amp=amp, channels_last=channels_last)
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.descriptor_dim), dtype=np.float32)


def evaluate(model, test_set, *, batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
             recall_values: Sequence[int] = DEFAULT_RECALL_VALUES, amp: bool = True,
             channels_last: bool | None = None, progress: bool = True,
             images: torch.Tensor | None = None) -> RecallResult:
    """Recall@N (percent) of ``model`` on ``test_set`` (a :class:`progeo.data.test_sets.TestSet`).

    ``images``: the set's images already decoded (uint8, database then queries, at the model's
    size), e.g. kept in memory by a training run that validates every epoch.
    """
    from progeo.eval.search import IndexConfig, build_index, search

    was_training = model.training
    if images is not None:
        descs = describe_images(model, images, batch_size=batch_size, device=device, amp=amp,
                                channels_last=channels_last)
    else:
        descs = describe_paths(model, test_set.images_paths, batch_size=batch_size, device=device,
                               num_workers=num_workers, amp=amp, channels_last=channels_last, progress=progress,
                               desc=f"describing {test_set.root.name}/{test_set.queries_folder}")
    model.train(was_training)
    database, queries = descs[: test_set.database_num], descs[test_set.database_num :]
    index = build_index(database, IndexConfig("flat"), progress=False)
    k = max(1, min(max(recall_values), test_set.database_num))
    _, predictions = search(index, queries, k)
    indptr, indices = test_set.positives_csr
    return compute_recalls_from_positives(predictions, indptr, indices, recall_values)
