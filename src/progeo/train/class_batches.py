"""Stage-2 batches: by class, reproducible from (seed, epoch, iteration), decoded or preloaded.

Stage-2 sampling is by class (SPEC 1.2): an item is a class of the current group and a random
image of that class is loaded. Within an epoch the classes are visited in a shuffled order,
reshuffled each time all of them have been seen (as an endless loader over the group would).
Every choice is a pure function of ``(seed, epoch, iteration)``: a run resumed at iteration i
sees exactly the batches an uninterrupted run would, and each process of a distributed run
takes its own disjoint slice of the same global batch.

Images come from an :class:`ImageSource`: decoded from disk per batch (in DataLoader workers
when ``num_workers > 0``) or, for small training sets, decoded once into one uint8 tensor in
memory (:class:`PreloadedImages`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from progeo.train.loop import numpy_rng

log = logging.getLogger(__name__)


def class_order(classes_num: int, seed: int, epoch: int, cycle: int) -> np.ndarray:
    return numpy_rng(seed, epoch, cycle, 17).permutation(classes_num)


def batch_items(group, seed: int, epoch: int, iteration: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image indices into the train set's list, labels) of global batch ``iteration`` of ``epoch``."""
    n = len(group)
    positions = iteration * batch_size + np.arange(batch_size)
    cycles, offsets = np.divmod(positions, n)
    labels = np.empty(batch_size, dtype=np.int64)
    for c in np.unique(cycles):
        sel = cycles == c
        labels[sel] = class_order(n, seed, epoch, int(c))[offsets[sel]]
    groups = group.groups
    first_class = int(groups.group_class_ptr[group.index])
    ptr = groups.class_image_ptr
    start = ptr[first_class + labels]
    count = ptr[first_class + labels + 1] - start
    pick = np.floor(numpy_rng(seed, epoch, iteration, 29).random(batch_size) * count).astype(np.int64)
    return groups.image_indices[start + np.minimum(pick, count - 1)], labels


class ImageSource:
    """Decodes images of a train set's list at a fixed size (``uint8`` 3 x S x S)."""

    def __init__(self, images: Sequence[str], image_size: int):
        self.images = images
        self.image_size = int(image_size)

    def load(self, indices: np.ndarray) -> torch.Tensor:
        from progeo.data.images import decode_image

        return torch.stack([decode_image(self.images[int(i)], self.image_size) for i in indices])

    @property
    def in_memory(self) -> bool:
        return False


class PreloadedImages(ImageSource):
    """The images of ``indices`` decoded once into a ``uint8`` N x 3 x S x S tensor."""

    def __init__(self, images: Sequence[str], image_size: int, indices: np.ndarray, num_workers: int = 0,
                 progress: bool = True):
        from progeo.data.images import iter_image_batches

        super().__init__(images, image_size)
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        self.row_of = np.full(len(images), -1, dtype=np.int64)
        self.row_of[indices] = np.arange(indices.size)
        self.pixels = torch.empty((indices.size, 3, self.image_size, self.image_size), dtype=torch.uint8)
        paths = [images[int(i)] for i in indices]
        batches = iter_image_batches(paths, self.image_size, batch_size=256, num_workers=num_workers, skip_hint=False)
        for batch, rows in tqdm(batches, desc="preloading images", unit="batch", disable=not progress):
            self.pixels[rows] = batch
        log.info("preloaded %d images at %d px (%.0f MiB)", indices.size, self.image_size,
                 self.pixels.numel() / 2**20)

    def load(self, indices: np.ndarray) -> torch.Tensor:
        rows = self.row_of[np.asarray(indices, dtype=np.int64)]
        if (rows < 0).any():
            return super().load(indices)
        return self.pixels[torch.from_numpy(rows)]

    @property
    def in_memory(self) -> bool:
        return True


def preload_bytes(images_num: int, image_size: int) -> int:
    return images_num * 3 * image_size * image_size


class EpochBatches(Dataset):
    """Item ``k`` = this process's part of global batch ``start + k`` of an epoch: (uint8 images, labels)."""

    def __init__(self, group, source: ImageSource, seed: int, epoch: int, start: int, stop: int,
                 batch_size: int, part: slice):
        self.group, self.source = group, source
        self.seed, self.epoch, self.start, self.stop = seed, epoch, start, stop
        self.batch_size, self.part = batch_size, part

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices, labels = batch_items(self.group, self.seed, self.epoch, self.start + k, self.batch_size)
        indices, labels = indices[self.part], labels[self.part]
        return self.source.load(indices), torch.from_numpy(labels)


def epoch_loader(dataset: EpochBatches, num_workers: int, pin_memory: bool):
    """Iterable over the batches of ``dataset`` (in order), in workers when asked and useful."""
    from progeo.train.interrupt import ignore_stop_signals

    if num_workers == 0 or dataset.source.in_memory:
        return (dataset[k] for k in range(len(dataset)))
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4, worker_init_fn=ignore_stop_signals)
