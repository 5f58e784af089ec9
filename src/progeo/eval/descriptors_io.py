"""Saved descriptors: float16 vectors on disk, read back memory-mapped.

A descriptors folder holds

``descriptors.npy``  N x dim float16 (``np.load(..., mmap_mode="r")`` reads it lazily);
``paths.txt``        the N image paths, one per line, row order;
``utms.npy``         N x 2 float64 UTM (east, north) metres, when known;
``meta.json``        model, image size, dim, count, dataset, split (written last: a folder
                     without it is incomplete).

:class:`DescriptorsWriter` fills ``descriptors.npy`` batch by batch through
``np.lib.format.open_memmap`` on a temporary file that is renamed into place at the end, so
the whole set never has to fit in memory and an interrupted run leaves no half file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from progeo.errors import ConfigError, DatasetError, reading, unreadable
from progeo.io import atomic_path, new_temp_file, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

DESCRIPTORS_FILE = "descriptors.npy"
PATHS_FILE = "paths.txt"
UTMS_FILE = "utms.npy"
META_FILE = "meta.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DescriptorsMeta:
    """What the vectors are; ``count`` and ``dim`` are filled in by the writer."""

    model: str
    image_size: tuple[int, int] | None  # None: images described at their native size
    dataset: str = ""
    split: str = ""
    dim: int = 0
    count: int = 0
    dtype: str = "float16"
    has_utms: bool = False
    metric: str = ""  # the search metric of the model ("cosine" | "l2"; "": saved before it was recorded)
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)


@dataclass
class SavedDescriptors:
    descriptors: np.ndarray  # N x dim float16, memory-mapped
    paths: list[str]
    utms: np.ndarray | None  # N x 2 float64 or None
    meta: DescriptorsMeta

    def __len__(self) -> int:
        return len(self.paths)


class DescriptorsWriter:
    """Append batches of descriptors (with their paths and UTMs), then :meth:`close`.

    ``capacity`` is the most rows that will be written (e.g. the number of images); fewer
    is fine (skipped images), the file is shrunk at the end. Use as a context manager: on an
    exception the temporary files are removed and nothing in ``folder`` changes.
    """

    def __init__(self, folder: str | os.PathLike, capacity: int, dim: int, meta: DescriptorsMeta):
        if capacity < 0 or dim < 1:
            raise ConfigError(f"descriptors capacity={capacity} and dim={dim} must be >= 0 and >= 1")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dim, self.meta, self.count = dim, meta, 0
        self._tmp: Path | None = new_temp_file(self.folder / DESCRIPTORS_FILE)
        self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.float16, shape=(capacity, dim))
        self._paths: list[str] = []
        self._utms: list[np.ndarray] = []
        self._with_utms: bool | None = None

    def append(self, descriptors, paths: Sequence[str | os.PathLike], utms: np.ndarray | None = None) -> None:
        """Write one batch: ``descriptors`` B x dim (numpy or torch), its B paths and B x 2 UTMs."""
        if hasattr(descriptors, "detach"):  # a torch tensor, possibly on a device
            descriptors = descriptors.detach().float().cpu().numpy()
        descriptors = np.asarray(descriptors)
        rows = len(descriptors)
        if descriptors.ndim != 2 or descriptors.shape[1] != self.dim:
            raise ConfigError(f"descriptor batch of shape {descriptors.shape} does not match dim {self.dim}")
        if len(paths) != rows or (utms is not None and np.shape(utms) != (rows, 2)):
            raise ConfigError(f"a batch of {rows} descriptors needs {rows} paths and {rows} x 2 UTMs")
        if self._with_utms is None:
            self._with_utms = utms is not None
        elif self._with_utms != (utms is not None):
            raise ConfigError("give UTMs with every batch or with none")
        if self.count + rows > len(self._array):
            raise ConfigError(f"more than the announced capacity of {len(self._array)} descriptors were written")
        self._array[self.count : self.count + rows] = descriptors
        self._paths.extend(os.fspath(p) for p in paths)
        if utms is not None:
            self._utms.append(np.asarray(utms, dtype=np.float64))
        self.count += rows

    def close(self) -> SavedDescriptors:
        """Finish the files and return them, memory-mapped."""
        if self._tmp is None:
            raise ConfigError("this descriptors writer is already closed")
        capacity = len(self._array)
        self._array.flush()
        del self._array
        if self.count < capacity:  # images were skipped: copy into an exact-size file
            source = np.load(self._tmp, mmap_mode="r")
            with atomic_path(self._tmp) as shrunk:
                target = np.lib.format.open_memmap(shrunk, mode="w+", dtype=np.float16, shape=(self.count, self.dim))
                for start in range(0, self.count, 1 << 16):
                    end = min(start + (1 << 16), self.count)
                    target[start:end] = source[start:end]
                target.flush()
                del target, source
        (self.folder / META_FILE).unlink(missing_ok=True)  # incomplete until the new meta is written
        os.replace(self._tmp, self.folder / DESCRIPTORS_FILE)
        self._tmp = None
        write_text_atomic(self.folder / PATHS_FILE, "".join(p + "\n" for p in self._paths))
        has_utms = bool(self._utms)
        if has_utms:
            with atomic_path(self.folder / UTMS_FILE) as tmp, open(tmp, "wb") as f:
                np.save(f, np.concatenate(self._utms))
        else:
            (self.folder / UTMS_FILE).unlink(missing_ok=True)
        meta = DescriptorsMeta(**{**asdict(self.meta), "dim": self.dim, "count": self.count, "has_utms": has_utms})
        size = list(meta.image_size) if meta.image_size is not None else None
        write_json_atomic(self.folder / META_FILE, {**asdict(meta), "image_size": size})
        logger.info("saved %d descriptors of dim %d to %s", self.count, self.dim, self.folder)
        return load_descriptors(self.folder)

    def abort(self) -> None:
        """Drop what was written; the folder keeps its previous content."""
        if self._tmp is not None:
            self.__dict__.pop("_array", None)
            self._tmp.unlink(missing_ok=True)
            self._tmp = None

    def __enter__(self) -> "DescriptorsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self._tmp is not None:
            self.close()


def save_descriptors(
    folder: str | os.PathLike,
    descriptors: np.ndarray,
    paths: Sequence[str | os.PathLike],
    meta: DescriptorsMeta,
    utms: np.ndarray | None = None,
) -> SavedDescriptors:
    """Save an in-memory set in one call (see :class:`DescriptorsWriter` for large sets)."""
    descriptors = np.asarray(descriptors)
    with DescriptorsWriter(folder, len(descriptors), descriptors.shape[1], meta) as writer:
        writer.append(descriptors, paths, utms)
        return writer.close()


def load_descriptors(
    folder: str | os.PathLike, expected_dim: int | None = None, mmap: bool = True
) -> SavedDescriptors:
    """Read a descriptors folder; every inconsistency raises :class:`DatasetError` naming the file."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path} is missing: {folder} is not a complete descriptors folder, extract the descriptors again")
    fix = "extract the descriptors again (`progeo eval --model M --test-set DIR --save-descriptors OUT`)"
    with reading(meta_path, "descriptors metadata", fix):
        raw = json.loads(meta_path.read_text(encoding="utf-8"))
        raw["image_size"] = tuple(raw["image_size"]) if raw["image_size"] is not None else None
        meta = DescriptorsMeta(**raw)
    array_path = folder / DESCRIPTORS_FILE
    with reading(array_path, "saved descriptors", fix):
        descriptors = np.load(array_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if descriptors.ndim != 2 or descriptors.shape != (meta.count, meta.dim):
        raise unreadable(array_path, "saved descriptors", f"shape {descriptors.shape}, but {META_FILE} says "
                         f"{meta.count} x {meta.dim}", fix)
    if expected_dim is not None and meta.dim != expected_dim:
        raise DatasetError(f"{array_path} holds {meta.dim}-d descriptors but the model gives {expected_dim}-d: use the same model or extract again")
    paths_path = folder / PATHS_FILE
    with reading(paths_path, "descriptors' image paths", fix):
        paths = paths_path.read_text(encoding="utf-8").splitlines()
    if len(paths) != meta.count:
        raise unreadable(paths_path, "descriptors' image paths", f"{len(paths)} lines for {meta.count} descriptors", fix)
    utms = None
    if meta.has_utms:
        utms_path = folder / UTMS_FILE
        with reading(utms_path, "descriptors' UTM coordinates", fix):
            utms = np.load(utms_path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if utms.shape != (meta.count, 2):
            raise unreadable(utms_path, "descriptors' UTM coordinates", f"shape {utms.shape}, expected {meta.count} x 2",
                             fix)
    return SavedDescriptors(descriptors, paths, utms, meta)
