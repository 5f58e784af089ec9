"""A val/test set of the VG benchmark: ``database/`` plus one selectable query folder.

Layout::

    ROOT/database/            (or ROOT/database_images_paths.txt beside it)
    ROOT/queries/             one or more query folders: queries, queries_v1, queries_night, ...

The query folder is chosen by name; by default ``queries`` if present, else the only
``queries*`` folder, else an error listing the choices. Attribute names follow CosPlace
(``database_paths``, ``queries_paths``, ``database_utms``, ``queries_utms``, ``database_num``,
``queries_num``, ``get_positives()``); ``images_paths`` is database then queries. Positives
of a query are the database images within ``positive_dist_threshold`` metres (UTM, Euclidean,
inclusive), computed for all queries at once with a KD-tree and kept as CSR
(:class:`Positives`); queries without positives are counted and logged, never dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from progeo.data.image_lists import ImageList, check_folder, read_image_list
from progeo.data.vg_names import parse_vg_names
from progeo.errors import ConfigError

logger = logging.getLogger(__name__)
DATABASE_FOLDER = "database"
QUERIES_PREFIX = "queries"


def list_query_folders(root: str | os.PathLike) -> list[str]:
    """Names of the ``queries*`` sub-folders of ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.startswith(QUERIES_PREFIX) and p.is_dir())


def select_query_folder(root: str | os.PathLike, queries: str | None = None) -> str:
    """The query folder to use: ``queries`` if given (must exist), else the default rule."""
    choices = list_query_folders(root)
    if queries is not None:
        if queries in choices:
            return queries
        raise ConfigError(
            f"query folder {queries!r} not found in {root}; choose one of: "
            + (", ".join(choices) if choices else "(none: the folder has no queries*/ sub-folder)")
        )
    if QUERIES_PREFIX in choices:
        return QUERIES_PREFIX
    if len(choices) == 1:
        return choices[0]
    if not choices:
        raise ConfigError(f"no query folder in {root}: expected a sub-folder named queries (or queries_*)")
    raise ConfigError(
        f"{root} has several query folders and none is named 'queries'; choose one of: {', '.join(choices)} "
        f"(queries_folder=NAME, or --queries NAME on the command line)"
    )


@dataclass(frozen=True)
class Positives:
    """CSR positives: query q's are ``indices[indptr[q]:indptr[q+1]]`` (sorted database ids)."""

    indptr: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.indptr.size - 1)

    def __getitem__(self, q: int) -> np.ndarray:
        return self.indices[self.indptr[q] : self.indptr[q + 1]]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def as_list(self) -> list[np.ndarray]:
        return np.split(self.indices, self.indptr[1:-1]) if len(self) else []


def positives_within(queries_utms: np.ndarray, database_utms: np.ndarray, radius: float) -> Positives:
    """Database points within ``radius`` (inclusive) of each query, via one KD-tree batch query."""
    from scipy.spatial import cKDTree

    q = len(queries_utms)
    if q == 0 or len(database_utms) == 0:
        return Positives(np.zeros(q + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    lists = cKDTree(database_utms).query_ball_point(queries_utms, r=radius, return_sorted=True)
    counts = np.fromiter(map(len, lists), dtype=np.int64, count=q)
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    indices = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int64, count=int(indptr[-1]))
    return Positives(indptr, indices)


class _Concat(Sequence[str]):
    def __init__(self, first: Sequence[str], second: Sequence[str]):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]


class TestSet:
    """Database and queries of a VG test folder, with UTM coordinates and positives."""

    __test__ = False  # not a pytest class

    def __init__(self, root: str | os.PathLike, queries_folder: str | None = None,
                 positive_dist_threshold: float = 25.0):
        if not positive_dist_threshold > 0:
            raise ConfigError(f"positive_dist_threshold must be > 0 metres, got {positive_dist_threshold}")
        self.root = check_folder(root, "test folder")
        self.positive_dist_threshold = float(positive_dist_threshold)
        self.queries_folder = select_query_folder(self.root, queries_folder)
        self.database_images: ImageList = read_image_list(self.root / DATABASE_FOLDER, what="database folder")
        self.queries_images: ImageList = read_image_list(self.root / self.queries_folder, what="query folder")
        self.database_utms = parse_vg_names(self.database_images).utms
        self.queries_utms = parse_vg_names(self.queries_images).utms

    @property
    def database_paths(self) -> ImageList:
        return self.database_images

    @property
    def queries_paths(self) -> ImageList:
        return self.queries_images

    @property
    def images_paths(self) -> Sequence[str]:
        """Database images then query images (CosPlace's order)."""
        return _Concat(self.database_images, self.queries_images)

    @property
    def database_num(self) -> int:
        return len(self.database_images)

    @property
    def queries_num(self) -> int:
        return len(self.queries_images)

    def __len__(self) -> int:
        return self.database_num + self.queries_num

    @cached_property
    def positives(self) -> Positives:
        pos = positives_within(self.queries_utms, self.database_utms, self.positive_dist_threshold)
        none = int(np.sum(pos.counts == 0))
        if none:
            logger.warning("%d of %d queries of %s have no database image within %g m; they count as misses",
                           none, self.queries_num, self.root / self.queries_folder, self.positive_dist_threshold)
        return pos

    @property
    def positives_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr, indices): the compact form, e.g. for recall from explicit positives."""
        return self.positives.indptr, self.positives.indices

    def get_positives(self) -> list[np.ndarray]:
        """Per query, the sorted database indices within the threshold (CosPlace contract)."""
        return self.positives.as_list()

    @property
    def queries_without_positives(self) -> np.ndarray:
        """Indices of the queries with no positive."""
        return np.flatnonzero(self.positives.counts == 0)

    def __repr__(self) -> str:
        return (f"TestSet({self.root}, queries={self.queries_folder!r}: {self.database_num} database, "
                f"{self.queries_num} queries, positives within {self.positive_dist_threshold:g} m)")
