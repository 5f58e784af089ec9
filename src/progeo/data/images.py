"""Fast, robust image decoding into uint8 tensors, one image or batches from parallel workers.

Decoding JPEGs is usually the slowest step of descriptor extraction, so:

* JPEGs are decoded at reduced size with Pillow's ``Image.draft`` (libjpeg DCT scaling by
  1/2, 1/4 or 1/8) whenever the target is at least 2x smaller than the image, then resized;
* images stay ``uint8`` (3 x H x W) until they are on the device; mean/std normalization is
  done there, in batches, by the model's preprocessing.

Resize modes (``resize_mode``):

``"resize"``
    stretch to exactly ``image_size`` (the VG benchmark's test-time transform; aspect ratio
    is not kept);
``"center-crop"``
    scale so that the short side covers the target, then cut the centred ``image_size`` box
    (CLIP's preprocessing; aspect ratio kept, borders lost).

Bad images (truncated or unreadable files): with ``on_bad_image="fail"`` the first one raises
:class:`~progeo.errors.ImageDecodeError` naming the file; with ``"skip"`` it is logged and
left out, and :attr:`ImageBatches.skipped_indices` lists it. Workers never raise: a dataset
item carries an error message instead of an image and the main process applies the policy,
so the behaviour (and the one-line error) is the same for 0 or N workers.
Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left untouched (``False``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator, Literal, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from progeo.errors import ConfigError, ImageDecodeError

logger = logging.getLogger(__name__)
BATCHES_PER_WORKER = 8  # a decoding worker is started only for this many batches of work

ResizeMode = Literal["resize", "center-crop"]
BadImagePolicy = Literal["fail", "skip"]
RESIZE_MODES = ("resize", "center-crop")
BAD_IMAGE_POLICIES = ("fail", "skip")
_EXIF_ORIENTATION = 0x0112
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` as ``(height, width)``; an int means a square."""
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image size {image_size!r} is invalid: give a positive int or (height, width)")
    return size  # type: ignore[return-value]


def _check_option(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid: choose one of {', '.join(allowed)}")


def _scaled_size(width: int, height: int, target_h: int, target_w: int, mode: str) -> tuple[int, int]:
    """Size (w, h) the full image is resized to before the (optional) centre crop."""
    if mode == "resize":
        return target_w, target_h
    scale = max(target_w / width, target_h / height)
    return max(target_w, round(width * scale)), max(target_h, round(height * scale))


def load_image(
    path: str | os.PathLike,
    image_size: int | Sequence[int] | None,
    resize_mode: ResizeMode = "resize",
    fast_jpeg: bool = True,
) -> Image.Image:
    """Decode ``path`` into an RGB PIL image of ``image_size`` (or native size when ``None``).

    Raises the underlying Pillow/OS error for a bad file (see :func:`decode_image`).
    """
    _check_option(resize_mode, RESIZE_MODES, "resize_mode")
    with Image.open(path) as img:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if img.format in ("JPEG", "MPO") else 1
        transposed = orientation in (5, 6, 7, 8)
        if image_size is not None:
            target_h, target_w = as_size(image_size)
            if transposed:  # the stored image is rotated by 90 degrees w.r.t. the displayed one
                target_h, target_w = target_w, target_h
            scaled = _scaled_size(img.width, img.height, target_h, target_w, resize_mode)
            if fast_jpeg and img.format in ("JPEG", "MPO"):
                img.draft("RGB", scaled)  # libjpeg picks the largest 1/s scale still >= scaled
        img.load()
        out = img.convert("RGB") if img.mode != "RGB" else img  # pixels are loaded: usable once closed
    if orientation != 1:
        out = ImageOps.exif_transpose(out)
    if image_size is None:
        return out
    target_h, target_w = as_size(image_size)
    scaled = _scaled_size(out.width, out.height, target_h, target_w, resize_mode)
    if out.size != scaled:
        out = out.resize(scaled, Image.Resampling.BILINEAR)
    if out.size != (target_w, target_h):
        left, top = (out.width - target_w) // 2, (out.height - target_h) // 2
        out = out.crop((left, top, left + target_w, top + target_h))
    return out


def pil_to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> contiguous ``uint8`` tensor of shape 3 x H x W."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def decode_image(
    path: str | os.PathLike,
    image_size: int | Sequence[int] | None,
    resize_mode: ResizeMode = "resize",
    fast_jpeg: bool = True,
) -> torch.Tensor:
    """Decode one image file into a ``uint8`` 3 x H x W tensor.

    Raises:
        ImageDecodeError: the file is missing, truncated or not an image.
    """
    try:
        return pil_to_uint8_tensor(load_image(path, image_size, resize_mode, fast_jpeg))
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(_bad_image_message(path, exc) + _FAIL_FIX) from exc


_FAIL_FIX = "; replace or delete the file"
_SKIP_HINT = ", or pass --on-bad-image skip to leave unreadable images out"  # where the command has that flag


def _bad_image_message(path: str | os.PathLike, exc: BaseException) -> str:
    """What is wrong with the file; the policy adds what to do (:data:`_FAIL_FIX` or the skip note)."""
    return f"cannot decode image {os.fspath(path)}: {exc}"


class DecodedItem(NamedTuple):
    """One dataset item: ``image`` is ``None`` and ``error`` says why when decoding failed."""

    image: torch.Tensor | None
    index: int
    error: str | None


class _PathTable:
    """Paths packed into one byte buffer + offsets: no per-string refcounts, so forked
    workers do not copy the list page by page (matters for millions of paths)."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        encoded = [os.fsencode(p) for p in paths]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.fsdecode(self._blob[start:end].tobytes())


class ImageFileDataset(Dataset):
    """Map-style dataset over image paths; item ``i`` is ``DecodedItem(image, i, error)``.

    A good image gives ``(uint8 3 x H x W tensor, i, None)``; a bad one
    ``(None, i, message)`` -- the policy is applied by :func:`collate_decoded` callers.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        image_size: int | Sequence[int] | None,
        resize_mode: ResizeMode = "resize",
        fast_jpeg: bool = True,
    ):
        _check_option(resize_mode, RESIZE_MODES, "resize_mode")
        self.paths = _PathTable(paths)
        # an ImageList read from a paths file: a missing image then means a stale list
        self.list_file, self.list_root = getattr(paths, "source", None), getattr(paths, "root", None)
        self.image_size = None if image_size is None else as_size(image_size)  # None: native size
        self.resize_mode = resize_mode
        self.fast_jpeg = fast_jpeg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> DecodedItem:
        path = self.paths[index]
        try:
            img = load_image(path, self.image_size, self.resize_mode, self.fast_jpeg)
            return DecodedItem(pil_to_uint8_tensor(img), index, None)
        except _DECODE_ERRORS as exc:
            if isinstance(exc, FileNotFoundError) and self.list_file is not None:
                from progeo.data.image_lists import missing_image_message

                return DecodedItem(None, index, missing_image_message(path, self.list_file, self.list_root))
            return DecodedItem(None, index, _bad_image_message(path, exc))


@dataclass
class CollatedBatch:
    images: torch.Tensor  # uint8, B x 3 x H x W (B may be 0)
    indices: torch.Tensor  # int64, B
    errors: list[tuple[int, str]]  # (index, message) of the items left out


def collate_decoded(items: Sequence[DecodedItem]) -> CollatedBatch:
    """Stack the good images of a batch; bad items go to ``errors`` instead."""
    good = [item for item in items if item.image is not None]
    errors = [(item.index, item.error or "unknown error") for item in items if item.image is None]
    if good:
        images = torch.stack([item.image for item in good])  # type: ignore[misc]
    else:
        images = torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    indices = torch.tensor([item.index for item in good], dtype=torch.int64)
    return CollatedBatch(images, indices, errors)


def collate_by_size(items: Sequence[DecodedItem]) -> list[CollatedBatch]:
    """Native-size decoding: one stacked batch per run of consecutive images of one size (order
    kept); the bad items are reported with the first."""
    runs: list[list[DecodedItem]] = []
    for item in items:
        if item.image is None:
            continue
        if runs and runs[-1][-1].image.shape == item.image.shape:  # type: ignore[union-attr]
            runs[-1].append(item)
        else:
            runs.append([item])
    batches = [collate_decoded(run) for run in runs] or [collate_decoded([])]
    batches[0].errors = [(item.index, item.error or "unknown error") for item in items if item.image is None]
    return batches


class ImageBatches:
    """Iterable of ``(uint8 images B x 3 x H x W, int64 indices B)`` over a path list.

    ``indices`` are positions in the input list, in order; skipped images are missing from
    them and listed in :attr:`skipped_indices` / :attr:`skipped_paths` (filled while iterating).
    ``image_size=None`` keeps every image at its native size: a batch of images of several
    sizes is then yielded as one batch per run of equal size. ``device`` is where the batches
    will go (memory is pinned only for a CUDA target).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        image_size: int | Sequence[int] | None,
        batch_size: int = 32,
        num_workers: int = 0,
        on_bad_image: BadImagePolicy = "fail",
        resize_mode: ResizeMode = "resize",
        device: str | torch.device = "cpu",
        fast_jpeg: bool = True,
        skip_hint: bool = True,
    ):
        _check_option(on_bad_image, BAD_IMAGE_POLICIES, "on_bad_image")
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(f"batch_size={batch_size} / num_workers={num_workers}: need batch_size >= 1, workers >= 0")
        self.dataset = ImageFileDataset(paths, image_size, resize_mode, fast_jpeg)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.on_bad_image = on_bad_image
        self.skip_hint = skip_hint  # errors suggest --on-bad-image skip (False for commands without it)
        self.pin_memory = torch.device(device).type == "cuda" and torch.cuda.is_available()
        self.skipped_indices: list[int] = []

    @property
    def skipped_paths(self) -> list[str]:
        return [self.dataset.paths[i] for i in self.skipped_indices]

    def __len__(self) -> int:
        """Number of batches before any image is skipped."""
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    @property
    def effective_workers(self) -> int:
        """Workers actually started: at most one per ``BATCHES_PER_WORKER`` batches, because
        starting a process costs more than decoding a few batches (measured with
        benchmarks/bench_eval.py: 4 workers made a 240-image query folder 2x slower on a GPU
        machine while speeding up its 1,440-image database 1.7x)."""
        return min(self.num_workers, len(self) // BATCHES_PER_WORKER)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped_indices = []
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.effective_workers,
            collate_fn=collate_decoded if self.dataset.image_size is not None else collate_by_size,
            pin_memory=self.pin_memory,
        )
        for collated in loader:
            for batch in (collated if isinstance(collated, list) else [collated]):
                for index, message in batch.errors:
                    if self.on_bad_image == "fail":
                        if "the list is stale" not in message:  # a stale list's message carries its own fix
                            message += _FAIL_FIX + (_SKIP_HINT if self.skip_hint else "")
                        raise ImageDecodeError(message)
                    logger.warning("left out (--on-bad-image skip): %s; replace or delete the file to include it",
                                   message)
                    self.skipped_indices.append(index)
                if len(batch.indices):
                    yield batch.images, batch.indices


iter_image_batches = ImageBatches  # the name the extractors call
