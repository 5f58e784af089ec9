"""A training folder seen group by group, the way ProGEO/CosPlace train on it.

:class:`TrainSet` holds the image list of the folder and its CosPlace partition
(:mod:`progeo.data.groups`, cached on disk). :class:`TrainGroup` is one group: its items are
*classes* (stage-2 sampling is by class: item ``label`` yields a random image of that class),
and :meth:`TrainGroup.all_images` lists every image with its label (stage 1 caches the
features of all images of a group). Labels are the class positions inside the group, which is
what a per-group classifier expects. Nothing here decodes images or imports torch: a loader
wraps ``(path, label)`` pairs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from progeo.data.groups import CosPlaceGroups, GroupsConfig, load_or_build_groups
from progeo.data.image_lists import ImageList, read_image_list
from progeo.errors import ConfigError, DatasetError


class TrainGroup:
    """Group ``index`` of a train set; ``len()`` is its number of classes."""

    def __init__(self, images: ImageList, groups: CosPlaceGroups, index: int):
        self.images = images
        self.groups = groups
        self.index = index
        self.group_id = tuple(int(v) for v in groups.group_ids[index])
        self._c0 = int(groups.group_class_ptr[index])
        self._c1 = int(groups.group_class_ptr[index + 1])

    @property
    def classes_num(self) -> int:
        return self._c1 - self._c0

    def __len__(self) -> int:
        return self.classes_num

    @property
    def images_num(self) -> int:
        ptr = self.groups.class_image_ptr
        return int(ptr[self._c1] - ptr[self._c0])

    @property
    def class_ids(self) -> np.ndarray:
        """(classes_num, 3) int64: rounded (east, north, heading) of each label."""
        return self.groups.class_ids[self._c0 : self._c1]

    @property
    def images_per_class(self) -> np.ndarray:
        return np.diff(self.groups.class_image_ptr[self._c0 : self._c1 + 1])

    def _check_label(self, label: int) -> int:
        if not 0 <= label < self.classes_num:
            raise IndexError(f"label {label} out of range for group {self.index} ({self.classes_num} classes)")
        return self._c0 + int(label)

    def image_indices(self, label: int) -> np.ndarray:
        """Indices (into the train set's image list) of the images of class ``label``."""
        return self.groups.images_of_class(self._check_label(label))

    def image_paths(self, label: int) -> list[str]:
        return [self.images[int(i)] for i in self.image_indices(label)]

    def sample(self, label: int, rng: np.random.Generator) -> tuple[str, int]:
        """(path of a random image of class ``label``, label): one stage-2 item."""
        indices = self.image_indices(label)
        return self.images[int(indices[rng.integers(indices.size)])], int(label)

    def all_images(self) -> tuple[np.ndarray, np.ndarray]:
        """(image indices, labels) of every image of the group, class by class."""
        return self.groups.images_of_group(self.index)

    def __repr__(self) -> str:
        return f"TrainGroup({self.index}, id={self.group_id}, {self.classes_num} classes, {self.images_num} images)"


class TrainSet:
    """The images of a training folder and their classes and groups."""

    def __init__(self, images: ImageList, groups: CosPlaceGroups):
        self.images = images
        self.groups = groups

    @classmethod
    def open(cls, folder: str | os.PathLike, config: GroupsConfig = GroupsConfig(), *,
             cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> TrainSet:
        """Read ``folder``'s image list and its groups (from the cache when valid)."""
        images = read_image_list(folder, what="train folder")
        groups = load_or_build_groups(images, config, cache_dir=cache_dir, use_cache=use_cache)
        if groups.groups_num == 0:
            raise DatasetError(
                f"no class of the train folder {Path(folder)} has {config.min_images_per_class} images "
                f"or more ({len(images)} images, M={config.M}, alpha={config.alpha}); lower "
                f"min_images_per_class or check the UTM/heading fields with `progeo check-dataset`"
            )
        return cls(images, groups)

    @property
    def groups_num(self) -> int:
        return self.groups.groups_num

    def group(self, index: int) -> TrainGroup:
        if not 0 <= index < self.groups_num:
            raise ConfigError(
                f"group {index} does not exist: the train folder {self.images.root} has "
                f"{self.groups_num} groups (0..{self.groups_num - 1}); lower groups_num"
            )
        return TrainGroup(self.images, self.groups, index)

    def first_groups(self, groups_num: int) -> list[TrainGroup]:
        """Groups ``0 .. groups_num - 1`` (the ones training uses); error when fewer exist."""
        if groups_num > self.groups_num:
            raise ConfigError(
                f"groups_num={groups_num} but the train folder {self.images.root} has only "
                f"{self.groups_num} groups with {self.groups.config}; lower groups_num"
            )
        return [self.group(g) for g in range(groups_num)]
