"""Validate a train or test folder and report counts and *every* problem found.

:func:`check_dataset` never stops at the first problem: missing or empty folders, unreadable
or stale paths files (a suspect list is compared with a walk of its folder), malformed names (each
listed, capped with "... and K more"), too few images per class and, with ``ImageChecks.verify``,
every image that cannot be read (:mod:`progeo.data.verify_images`). Only a path that is not a
folder at all, or an option naming a query folder that does not exist, raises
(:class:`~progeo.errors.ProgeoError`): there is nothing to check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from progeo.data.groups import GroupsConfig, build_groups
from progeo.data.image_lists import (ImageList, check_folder, paths_file_for, read_paths_file,
                                     regenerate_hint, sample_indices, walk_images)
from progeo.data.test_sets import DATABASE_FOLDER, list_query_folders, positives_within, select_query_folder
from progeo.data.vg_names import NAME_TEMPLATE, ParsedNames, parse_vg_names
from progeo.errors import ConfigError, DatasetError

KINDS = ("auto", "train", "test")


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: ordered counts, problems (each one line) and notes."""

    path: Path
    kind: str
    counts: dict[str, object] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unlisted_problems: int = 0  # counted in "... and K more" lines

    @property
    def problems_num(self) -> int:
        return len([p for p in self.problems if not p.startswith("... and ")]) + self.unlisted_problems

    @property
    def ok(self) -> bool:
        return self.problems_num == 0

    def format(self) -> str:
        width = max((len(k) for k in self.counts), default=0)
        lines = [f"{self.kind} set {self.path}"]
        for key, value in self.counts.items():
            shown = f"{value:,}" if isinstance(value, (int, np.integer)) else str(value)
            lines.append(f"  {key:<{width}}  {shown}")
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"problems ({self.problems_num}):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


@dataclass
class ImageChecks:
    """How the image files themselves are checked: ``paths_sample`` entries of a paths file checked to
    exist (None: all); ``verify``: None, "headers" or "full" (:mod:`progeo.data.verify_images`)."""

    paths_sample: int | None = 1000
    verify: str | None = None
    workers: int = 4
    progress: bool = True


def _read_list(folder: Path, what: str, report: DatasetReport, label: str, checks: ImageChecks) -> ImageList | None:
    """The image list of ``folder``, or None after recording why it cannot be had."""
    try:
        check_folder(folder, what)
        paths_file = paths_file_for(folder)
        if paths_file.exists() or paths_file.is_symlink():
            images = read_paths_file(folder, paths_file)
        else:
            images = walk_images(folder)
    except DatasetError as exc:
        report.problems.append(str(exc))
        return None
    report.counts[f"{label} images"] = len(images)
    report.counts[f"{label} list"] = f"{images.source} (paths file)" if images.source else "folder walk"
    if len(images) == 0:
        report.problems.append(f"the {what} {folder} is empty: no .jpg/.jpeg/.png found (searched recursively) "
                               f"and no {paths_file.name} beside it")
        return None
    if images.source is not None:
        _check_paths_file(images, report, checks.paths_sample)
    if checks.verify is not None:
        from progeo.data.verify_images import verify_images

        bad = verify_images(images, full=checks.verify == "full", workers=checks.workers, progress=checks.progress,
                            desc=f"verifying {label} images ({checks.verify})")
        report.counts[f"{label} images verified"] = f"{len(images):,} ({checks.verify})"
        report.counts[f"{label} bad images"] = len(bad)
        report.problems += [f"bad image {images.relative_path(i)!r} ({images.origin}): {why}" for i, why in bad]
    return images


def _check_paths_file(images: ImageList, report: DatasetReport, paths_sample: int | None) -> None:
    """Listed entries that do not exist, and, when a sample says the list may be stale, the images a walk
    finds that it does not list."""
    folder, checked = images.root, (np.arange(len(images)) if paths_sample is None
                                    else sample_indices(len(images), paths_sample))
    missing = images.missing(checked)
    if missing:
        shown = ", ".join(repr(images.relative_path(i)) for i in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        report.problems.append(
            f"{len(missing)} of {len(checked)} checked entries of {images.source} do not exist under "
            f"{folder}: {shown}{more}; paths must be relative to {folder} itself: {regenerate_hint(folder)}")
    newer = images.newer_folders(checked)
    if not (missing or newer):
        return
    walked = walk_images(folder)
    listed = {images.relative_path(i) for i in range(len(images))}
    unlisted = [path for path in map(walked.relative_path, range(len(walked))) if path not in listed]
    if unlisted:
        shown = ", ".join(map(repr, unlisted[:5])) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        report.problems.append(f"the image list {images.source} is stale: {len(unlisted)} image(s) under {folder} "
                               f"are not listed ({shown}); {regenerate_hint(folder)}")
    elif newer and not missing:
        report.notes.append(f"{newer[0]} was modified after {images.source} was written, but the list matches "
                            f"a walk of {folder}")


def _zones(parsed: ParsedNames) -> str:
    """Distinct UTM zones ("10S, 10T") of the valid names, for the report."""
    number = parsed["utm_zone_number"][parsed.valid]
    letter = parsed["utm_zone_letter"][parsed.valid].astype("S1").view(np.uint8)
    keys = np.unique(np.nan_to_num(number, nan=-1.0) * 256 + letter)
    zones = [("?" if k < 0 else f"{int(k // 256)}") + (chr(int(k % 256)) if int(k % 256) else "") for k in keys[:6]]
    return ", ".join(zones[:5]) + (" ..." if len(zones) > 5 else "") if zones else "-"


def _parse(images: ImageList, fields: tuple[str, ...], required: tuple[str, ...], report: DatasetReport,
           label: str, max_listed: int) -> ParsedNames:
    parsed = parse_vg_names(images, fields=(*fields, "utm_zone_number", "utm_zone_letter"), required=required,
                            errors="collect", max_problems=max_listed)
    report.counts[f"{label} malformed names"] = parsed.num_invalid
    for p in parsed.problems:
        report.problems.append(f"malformed name {p.path!r} ({images.origin}): {p.message}")
    if parsed.num_problems > len(parsed.problems):
        report.unlisted_problems += parsed.num_problems - len(parsed.problems)
        report.problems.append(f"... and {parsed.num_problems - len(parsed.problems)} more problems in "
                               f"{label} names")
    if parsed.num_problems and not any(NAME_TEMPLATE in n for n in report.notes):
        report.notes.append(f"image names must have the form {NAME_TEMPLATE}")
    report.counts[f"{label} UTM zones"] = _zones(parsed)
    return parsed


def _check_train(root: Path, report: DatasetReport, config: GroupsConfig, max_listed: int,
                 checks: ImageChecks) -> None:
    images = _read_list(root, "train folder", report, "train", checks)
    if images is None:
        return
    fields = ("utm_east", "utm_north", "heading")
    parsed = _parse(images, fields, fields, report, "train", max_listed)
    groups = build_groups(parsed["utm_east"], parsed["utm_north"], parsed["heading"], config, valid=parsed.valid)
    ipc = groups.images_per_class
    report.counts.update({
        "classes": groups.classes_before_filtering,
        f"classes with >= {config.min_images_per_class} images": groups.classes_num,
        "images in those classes": int(groups.image_indices.size),
        "groups": groups.groups_num,
        "images per class min/median/max": f"{ipc.min()}/{np.median(ipc):g}/{ipc.max()}" if ipc.size else "-",
        "parameters": f"M={config.M} alpha={config.alpha} N={config.N} L={config.L}",
    })
    if groups.classes_num == 0 and parsed.valid.any():
        report.problems.append(
            f"no class has {config.min_images_per_class} images or more (M={config.M} m, alpha={config.alpha} deg): "
            f"nothing to train on; lower --min-images-per-class or check the UTM and heading fields")


def _check_test(root: Path, report: DatasetReport, queries: str | None, positive_dist: float, max_listed: int,
                checks: ImageChecks) -> None:
    folders = [select_query_folder(root, queries)] if queries is not None else list_query_folders(root)
    db = _read_list(root / DATABASE_FOLDER, "database folder", report, "database", checks)
    db_utms = None
    if db is not None:
        parsed = _parse(db, ("utm_east", "utm_north"), ("utm_east", "utm_north"), report, "database", max_listed)
        db_utms = parsed.utms[parsed.valid]
    if not folders:
        report.problems.append(f"no query folder in {root}: expected a sub-folder named queries (or queries_*)")
    for name in folders:
        q = _read_list(root / name, "query folder", report, name, checks)
        if q is None:
            continue
        parsed = _parse(q, ("utm_east", "utm_north"), ("utm_east", "utm_north"), report, name, max_listed)
        if db_utms is not None:
            counts = positives_within(parsed.utms[parsed.valid], db_utms, positive_dist).counts
            none = int(np.sum(counts == 0))
            report.counts[f"{name} without positives (<= {positive_dist:g} m)"] = none
            if none:
                report.notes.append(f"{none} of {counts.size} queries in {name}/ have no database image within "
                                    f"{positive_dist:g} m: they stay in the recall denominator")


def check_dataset(path: str | os.PathLike, kind: str = "auto", *, queries: str | None = None,
                  positive_dist: float = 25.0, groups_config: GroupsConfig = GroupsConfig(),
                  max_listed: int = 20, paths_sample: int | None = 1000,
                  images: ImageChecks | None = None) -> DatasetReport:
    """Check a train folder or a test folder (``database/`` + ``queries*/``).

    ``paths_sample`` entries of each paths file are checked to exist (None: all of them);
    ``images`` (which overrides ``paths_sample``) also verifies the image files.
    Raises :class:`DatasetError` when ``path`` is not a folder and :class:`ConfigError` for a bad
    option; every other problem goes into the report.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not positive_dist > 0:
        raise ConfigError(f"positive_dist must be > 0 metres, got {positive_dist}")
    root = check_folder(path, "dataset folder")
    if kind == "auto":
        kind = "test" if (root / DATABASE_FOLDER).is_dir() or list_query_folders(root) else "train"
    checks = images or ImageChecks(paths_sample)
    if checks.verify not in (None, "headers", "full"):
        raise ConfigError(f"verify must be None, 'headers' or 'full', got {checks.verify!r}")
    report = DatasetReport(root, kind)
    if kind == "train":
        _check_train(root, report, groups_config, max_listed, checks)
    else:
        _check_test(root, report, queries, positive_dist, max_listed, checks)
    return report
