"""The list of images of one dataset folder, kept as one bytes buffer plus line offsets.

A folder's images come from ``<folder>_images_paths.txt`` beside the folder when that file
exists (one path per line, relative to the folder itself: ``train_images_paths.txt`` beside
``train/`` lists ``37/@...@.jpg`` for ``train/37/@...@.jpg``; blank lines and ``\\r\\n`` line
ends are tolerated), otherwise from a recursive, sorted walk of the folder (``.jpg``,
``.jpeg``, ``.png``, any case). Reading a list of millions of paths is one ``read_bytes`` and a
vectorized newline search: no Python string is made until a path is asked for.

A paths file goes stale when images are added or deleted after it was written. Reading it stays
scan-free: a sample of entries is checked to exist (a stale list is then an error), and the
folder and the folders of those entries are checked not to have been modified after the list
(``st_mtime``: adding or deleting a file updates its folder's); a newer folder is a warning,
since a copy without ``-p`` can also reorder the times. An image that turns out to be missing
when decoded names the list too (:func:`missing_image_message`). ``progeo list-images FOLDER``
regenerates a list; ``progeo check-dataset`` compares a suspect list with a walk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from progeo.errors import DatasetError, unreadable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
PATHS_FILE_SUFFIX = "_images_paths.txt"
_SCAN_BLOCK = 1 << 22  # bytes scanned per numpy pass (bounds the temporary bool array)
log = logging.getLogger(__name__)


def paths_file_for(folder: str | os.PathLike) -> Path:
    """``<folder>_images_paths.txt`` beside ``folder`` (it may not exist)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}{PATHS_FILE_SUFFIX}"


def regenerate_hint(folder: str | os.PathLike) -> str:
    """How to rebuild the paths file of ``folder``, for messages."""
    folder = Path(folder)
    return (f"regenerate it with `progeo list-images {folder}` (or delete {paths_file_for(folder)} to walk "
            f"the folder instead)")


def missing_image_message(path: str | os.PathLike, list_file: str | os.PathLike, folder: str | os.PathLike) -> str:
    """The error for a listed image that does not exist: the list is stale, not the image bad."""
    return (f"image {os.fspath(path)} is listed in {list_file} but does not exist: the list is stale (images "
            f"deleted or moved since it was written); {regenerate_hint(folder)}")


def sample_indices(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced indices in ``[0, n)`` including the first and the last (deterministic)."""
    if n <= 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def _line_spans(buffer: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the non-blank lines of ``buffer`` (``\r`` before ``\n`` dropped)."""
    arr = np.frombuffer(buffer, dtype=np.uint8)
    parts = [np.flatnonzero(arr[s : s + _SCAN_BLOCK] == 10) + s for s in range(0, arr.size, _SCAN_BLOCK)]
    if arr.size and arr[-1] != 10:
        parts.append(np.array([arr.size]))  # last line without a newline
    ends = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    cr = (np.take(arr, ends - 1, mode="clip") == 13) & (ends > starts)
    if cr.any():
        ends -= cr
    keep = ends > starts
    if not keep.all():
        starts, ends = starts[keep], ends[keep]
    return starts, ends


class ImageList(Sequence[str]):
    """Paths of the images of ``root``: ``images[i]`` is the full path (a new ``str``) of image i.

    ``buffer[starts[i]:ends[i]]`` is the path of image i relative to ``root`` (file-system
    bytes). ``source`` is the paths file it was read from, or None for a folder walk.
    """

    def __init__(self, root: str | os.PathLike, buffer: bytes, starts: np.ndarray, ends: np.ndarray,
                 source: Path | None = None):
        self.root = Path(root)
        self.buffer = buffer
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.source = source
        self._root_str = os.fspath(self.root)
        self._hash: str | None = None

    @classmethod
    def from_relative_paths(cls, root: str | os.PathLike, paths: Iterable[str],
                            source: Path | None = None) -> ImageList:
        buffer = b"\n".join(os.fsencode(p) for p in paths)
        starts, ends = _line_spans(buffer)
        return cls(root, buffer, starts, ends, source)

    @property
    def origin(self) -> str:
        """Where the list came from, for messages."""
        return f"listed in {self.source}" if self.source is not None else f"found in {self.root}"

    @property
    def content_hash(self) -> str:
        """SHA-1 of the list's bytes: changes whenever a path is added, removed or renamed."""
        if self._hash is None:
            self._hash = hashlib.sha1(self.buffer).hexdigest()
        return self._hash

    def __len__(self) -> int:
        return int(self.starts.size)

    def relative_path(self, i: int) -> str:
        return os.fsdecode(self.buffer[self.starts[i] : self.ends[i]])

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return os.path.join(self._root_str, self.relative_path(i))

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def missing(self, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` whose file does not exist."""
        return [int(i) for i in indices if not os.path.exists(self[int(i)])]

    def newer_folders(self, indices: Iterable[int]) -> list[Path]:
        """The root and the folders of the ``indices`` entries modified after the paths file was
        written (one ``stat`` per distinct folder, no directory scan); [] for a folder walk."""
        if self.source is None:
            return []
        try:
            listed = os.stat(self.source).st_mtime_ns
        except OSError:
            return []
        folders = {self.root}
        folders.update(self.root / os.path.dirname(self.relative_path(int(i))) for i in indices)
        newer = []
        for folder in sorted(folders):
            try:
                if os.stat(folder).st_mtime_ns > listed:
                    newer.append(folder)
            except OSError:
                continue
        return newer

    def __repr__(self) -> str:
        return f"ImageList({len(self)} images {self.origin})"


def read_paths_file(folder: str | os.PathLike, paths_file: str | os.PathLike | None = None) -> ImageList:
    """Read the image list of ``folder`` from its paths file (no existence check of the entries)."""
    folder = Path(folder)
    paths_file = Path(paths_file) if paths_file is not None else paths_file_for(folder)
    try:
        buffer = paths_file.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"cannot read the image list {paths_file} ({exc.strerror or exc}); make it a readable "
            f"text file with one image path per line, relative to {folder}, or delete it to walk "
            f"the folder instead"
        ) from exc
    if b"\0" in buffer:  # no path holds a NUL byte: the file is binary (overwritten or not a list)
        raise unreadable(paths_file, "image list", f"binary data at byte {buffer.index(0)}",
                         f"regenerate it (progeo.data.image_lists.write_paths_file) or delete it to walk {folder}")
    starts, ends = _line_spans(buffer)
    if starts.size == 0:
        raise DatasetError(
            f"the image list {paths_file} lists no images; write one path per line, relative to "
            f"{folder}, or delete it to walk the folder instead"
        )
    return ImageList(folder, buffer, starts, ends, source=paths_file)


def walk_images(folder: str | os.PathLike) -> ImageList:
    """Every .jpg/.jpeg/.png under ``folder`` (recursive, symlinks followed once), sorted."""
    folder = Path(folder)
    rel: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop: do not descend twice
            dirnames[:] = []
            continue
        seen.add(real)
        prefix = os.path.relpath(dirpath, folder)
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel.append(name if prefix == "." else os.path.join(prefix, name))
    rel.sort()
    return ImageList.from_relative_paths(folder, rel)


def check_folder(folder: str | os.PathLike, what: str = "image folder") -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(
            f"the {what} {folder} does not exist; expected a folder of images named "
            f"@UTM_east@UTM_north@...@.jpg (check the path)"
        )
    if not folder.is_dir():
        raise DatasetError(f"the {what} {folder} is not a folder; pass the folder that holds the images")
    return folder


def read_image_list(folder: str | os.PathLike, *, use_paths_file: bool = True,
                    verify_sample: int = 16, what: str = "image folder") -> ImageList:
    """The images of ``folder``: from its paths file when present, else from a walk.

    ``verify_sample`` listed entries (evenly spaced, first and last included) are checked to
    exist; a stale paths file is an error naming it. Raises :class:`DatasetError` for a missing,
    empty or unreadable input.
    """
    folder = check_folder(folder, what)
    paths_file = paths_file_for(folder)
    if use_paths_file and (paths_file.exists() or paths_file.is_symlink()):
        images = read_paths_file(folder, paths_file)
        missing = images.missing(sample_indices(len(images), verify_sample))
        if missing:
            shown = ", ".join(repr(images.relative_path(i)) for i in missing[:3])
            raise DatasetError(
                f"the image list {paths_file} is stale: {len(missing)} of the "
                f"{min(verify_sample, len(images))} entries checked do not exist under {folder} "
                f"(e.g. {shown}); paths must be relative to {folder} itself: {regenerate_hint(folder)}"
            )
        newer = images.newer_folders(sample_indices(len(images), verify_sample))
        if newer:
            log.warning("the image list %s may be stale: %s changed after it was written (images added or deleted "
                        "since are not seen); %s", paths_file, ", ".join(map(str, newer[:3])), regenerate_hint(folder))
        return images
    images = walk_images(folder)
    if len(images) == 0:
        raise DatasetError(
            f"no images (.jpg, .jpeg, .png) found in {folder} (searched recursively) and no "
            f"{paths_file.name} beside it; expected images named @UTM_east@UTM_north@...@.jpg"
        )
    return images


def write_paths_file(folder: str | os.PathLike, paths: Sequence[str] | None = None) -> Path:
    """Write ``<folder>_images_paths.txt`` (atomically) from ``paths`` (relative) or a walk."""
    from progeo.io import atomic_path

    folder = Path(folder)
    if paths is None:
        images = walk_images(folder)
        paths = [images.relative_path(i) for i in range(len(images))]
    target = paths_file_for(folder)
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"".join(os.fsencode(p) + b"\n" for p in paths))
    return target


def natural_key(path: str) -> list:
    """Sort key putting photo2 before photo10: digit runs compare as numbers, the rest as text
    (case-insensitive, then as written)."""
    return [(0, int(part), part) if part.isdigit() else (1, part.lower(), part)
            for part in re.split(r"(\d+)", path) if part]


def expand_photo_paths(items: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str]:
    """Files in the order given, a folder as its images (recursive) in natural order (photo2
    before photo10); a missing path is an error."""
    items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = list(walk_images(item))
            if not found:
                raise DatasetError(f"no image (.jpg, .jpeg, .png) in the folder {item}")
            paths.extend(sorted(found, key=natural_key))
        elif os.path.exists(item):
            paths.append(os.fspath(item))
        else:
            raise DatasetError(f"photo {item} does not exist: give image files or folders of images")
    return paths
