"""The published CosPlace / ProGEO order of groups and classes, rebuilt from progeo's partition.

progeo sorts groups by group id and classes by class id (see :mod:`progeo.data.groups`). The
authors' dataset code numbers them differently, and their per-group tensors (the stage-1 prompt
learners: row k = class label k of group i) follow their numbering. From the published code's
behaviour (facts, not code):

- the image list is ``<folder>_images_paths.txt`` when it exists, else the sorted result of
  ``glob("<folder>/**/*.jpg", recursive=True)`` (only ``.jpg``, case-sensitive; hidden files and
  folders skipped) -- progeo reads the same paths file, and its folder walk sorts the same way;
- classes with fewer than ``min_images_per_class`` images are dropped first (same partition);
- groups are numbered by the first image (in list order) of a kept class of the group;
- the classes of a group are the iteration order of a Python ``set`` into which the class ids
  (tuples of three ints) were added image by image. Adding an element twice changes nothing,
  so the set equals one built by adding each class once, in order of its first image. Its
  iteration order depends only on those insertions and on the hashes of int tuples, which
  CPython does not randomize. It is the same on CPython 3.8 to 3.13 (checked); 3.8 changed the
  tuple hash, so a run under Python 3.7 (the authors' repository holds 3.7 and 3.10 bytecode)
  ordered them otherwise: ``python="3.7"`` reproduces that order by giving the set elements
  3.7's tuple hash (checked against a real 3.7 interpreter: same order).

:func:`authors_order` rebuilds that numbering with the running interpreter's ``set``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from progeo.data.groups import CosPlaceGroups
from progeo.errors import ConfigError


@dataclass(frozen=True)
class AuthorsGroup:
    """One group as the authors number it: ``classes[k]`` is progeo's class index of their label k."""

    group_id: tuple[int, int, int]
    progeo_group: int  # index of the same group in progeo's (sorted) order
    classes: np.ndarray  # (n,) int64, progeo global class indices

    def to_progeo_labels(self) -> np.ndarray:
        """``rows[j]``: the authors' label of progeo's label j in this group (a permutation)."""
        start = int(self.classes.min())  # progeo's classes of a group are contiguous
        rows = np.empty(self.classes.size, dtype=np.int64)
        rows[self.classes - start] = np.arange(self.classes.size)
        return rows


AUTHORS_PYTHONS = ("3.8", "3.7")  # "3.8": CPython 3.8 and later
_M64 = (1 << 64) - 1


def _tuple_hash_py37(t: tuple[int, ...]) -> int:
    """CPython 3.7's hash of a tuple (64-bit builds), from the element hashes."""
    x, mult, n = 0x345678, 1000003, len(t)
    for item in t:
        n -= 1
        x = ((x ^ (hash(item) & _M64)) * mult) & _M64
        mult = (mult + 82520 + n + n) & _M64
    x = (x + 97531) & _M64
    if x == _M64:  # -1 is reserved for errors
        x -= 1
    return x - (1 << 64) if x >> 63 else x


class _Py37Key:
    """A class id that a set places as CPython 3.7 placed the tuple (same table, 3.7's hash)."""

    __slots__ = ("cid", "_hash")

    def __init__(self, cid: tuple[int, ...]):
        self.cid, self._hash = cid, _tuple_hash_py37(cid)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, _Py37Key) and self.cid == other.cid


def check_authors_image_list(images) -> None:
    """Refuse an image list the authors' code would not have read in the same order.

    With a paths file both sides read the file as it is. A folder walk must list only what their
    ``glob("**/*.jpg")`` finds: ``.jpg`` names (lower case) outside hidden files and folders.
    """
    if images.source is not None or len(images) == 0:
        return
    arr = np.frombuffer(images.buffer, dtype=np.uint8)
    starts, ends = images.starts, images.ends
    bad = ends - starts < 4
    for k, byte in enumerate(b".jpg"):
        bad |= np.take(arr, ends - 4 + k, mode="clip") != byte
    bad |= np.take(arr, starts, mode="clip") == ord(".")  # a hidden first component
    dots = np.flatnonzero(arr == ord("."))
    hidden = dots[np.take(arr, dots - 1, mode="clip") == ord("/")]  # a hidden later component
    bad[np.searchsorted(starts, hidden, side="right") - 1] = True
    if bad.any():
        rel = images.relative_path(int(np.flatnonzero(bad)[0]))
        raise ConfigError(
            f"{images.root} holds {rel!r}, which the authors' code does not read (it globs **/*.jpg, "
            f"case-sensitive, without hidden files), so their classes differ from progeo's; write the "
            f"list they used to {images.root.name}_images_paths.txt beside the folder and retry")


def authors_order(images, groups: CosPlaceGroups, python: str = "3.8") -> list[AuthorsGroup]:
    """The authors' groups, in their order, each with its classes in their label order.

    ``images``: the train set's :class:`~progeo.data.image_lists.ImageList`; ``groups``: its
    progeo partition (built from the same list, so image indices are list positions);
    ``python``: the Python the authors ran, "3.8" (3.8 and later) or "3.7".
    """
    if python not in AUTHORS_PYTHONS:
        raise ConfigError(f"python={python!r}: the authors' class order is known for {' or '.join(AUTHORS_PYTHONS)}")
    key = _Py37Key if python == "3.7" else tuple
    unkey = (lambda k: k.cid) if python == "3.7" else (lambda k: k)
    check_authors_image_list(images)
    ptr_c, ptr_g = groups.class_image_ptr, groups.group_class_ptr
    if groups.classes_num == 0:
        return []
    # first image (list position) of every kept class: a class's images are stored in list order
    first = np.minimum.reduceat(groups.image_indices, ptr_c[:-1])
    class_ids = groups.class_ids.tolist()
    out = []
    for g in range(groups.groups_num):
        members = np.arange(ptr_g[g], ptr_g[g + 1])
        members = members[np.argsort(first[members], kind="stable")]  # insertion order
        as_set = set()
        for c in members.tolist():
            as_set.add(key(tuple(class_ids[c])))
        index = {tuple(class_ids[c]): c for c in members.tolist()}
        ordered = np.fromiter((index[unkey(k)] for k in as_set), dtype=np.int64, count=members.size)
        out.append((int(first[members[0]]), AuthorsGroup(tuple(int(v) for v in groups.group_ids[g]), g, ordered)))
    out.sort(key=lambda item: item[0])  # groups by their first image
    return [group for _, group in out]


def rows_for_progeo(order: list[AuthorsGroup], classes_per_group: list[int], what: str) -> list[np.ndarray]:
    """For tensors with one row per class in the authors' order (``classes_per_group`` rows in
    each of their first groups): per group, the rows to take so that row j is progeo's label j.

    Raises :class:`ConfigError` naming ``what`` when the counts show another train set or
    other groups parameters.
    """
    if len(classes_per_group) > len(order):
        raise ConfigError(f"{what} has {len(classes_per_group)} groups; the train set has {len(order)} with these "
                          "groups parameters; pass the train folder and M/alpha/N/L/min-images-per-class it was learned with")
    wrong = [(i, n, order[i].classes.size) for i, n in enumerate(classes_per_group) if n != order[i].classes.size]
    if wrong:
        shown = "; ".join(f"group {i}: {n} in the file, {m} in the train set" for i, n, m in wrong[:3])
        raise ConfigError(f"{what} does not match the train set's classes in the authors' order ({shown}); pass the "
                          "train folder and M/alpha/N/L/min-images-per-class the prompts were learned with")
    return [order[i].to_progeo_labels() for i in range(len(classes_per_group))]
