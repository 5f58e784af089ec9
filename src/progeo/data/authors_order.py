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
  CPython does not randomize; it is the same for CPython >= 3.8 (3.8 changed the tuple hash, so
  prompts learned under Python 3.7 would be ordered otherwise).

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


def check_authors_image_list(images) -> None:
    """Refuse an image list the authors' code would not have read in the same order.

    With a paths file both sides read the file as it is. A folder walk must list only what their
    ``glob("**/*.jpg")`` finds: ``.jpg`` names (lower case) outside hidden files and folders.
    """
    if images.source is not None:
        return
    for i in range(len(images)):
        rel = images.relative_path(i)
        parts = rel.replace("\\", "/").split("/")
        if not rel.endswith(".jpg") or any(p.startswith(".") for p in parts):
            raise ConfigError(
                f"{images.root} holds {rel!r}, which the authors' code does not read (it globs **/*.jpg, "
                f"case-sensitive, without hidden files), so their classes differ from progeo's; write the "
                f"list they used to {images.root.name}_images_paths.txt beside the folder and retry")


def authors_order(images, groups: CosPlaceGroups) -> list[AuthorsGroup]:
    """The authors' groups, in their order, each with its classes in their label order.

    ``images``: the train set's :class:`~progeo.data.image_lists.ImageList`; ``groups``: its
    progeo partition (built from the same list, so image indices are list positions).
    """
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
            as_set.add(tuple(class_ids[c]))
        index = {tuple(class_ids[c]): c for c in members.tolist()}
        ordered = np.fromiter((index[cid] for cid in as_set), dtype=np.int64, count=members.size)
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
