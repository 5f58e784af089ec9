"""``progeo check-dataset``: validate a train or test folder, print counts and every problem;
``progeo list-images``: write the ``<folder>_images_paths.txt`` of image folders."""

from __future__ import annotations

import argparse

from progeo.cli.train import add_groups_flags, groups_from_args

DESCRIPTION = """Validate a visual geo-localization dataset folder and print its counts (images,
classes, groups, images per class, database and query sizes, queries without positives) and
every problem found (malformed names, missing paths, stale or unreadable paths files, empty
folders; with --verify-images, every unreadable or truncated image).
A train folder holds images named @UTM_east@UTM_north@...@heading@...@.jpg; a test folder holds
database/ and queries*/ sub-folders. Exit status: 0 no problem, 1 problems found, 2 unusable input."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check-dataset", help="validate a train or test folder", description=DESCRIPTION)
    p.add_argument("path", metavar="PATH", help="train folder, or test folder with database/ and queries*/")
    p.add_argument("--kind", choices=("auto", "train", "test"), default="auto",
                   help="auto: test when PATH has database/ or queries*/ (default: %(default)s)")
    p.add_argument("--queries", metavar="NAME", default=None,
                   help="query folder to check (default: every queries*/ folder)")
    p.add_argument("--positive-dist", type=float, default=25.0, metavar="METRES",
                   help="a database image within this distance of a query is a positive (default: %(default)s)")
    add_groups_flags(p)
    p.add_argument("--max-listed", type=int, default=20, help="malformed names listed per folder (default: %(default)s)")
    p.add_argument("--all-paths", action="store_true",
                   help="check that every entry of a paths file exists (default: a sample of 1000)")
    p.add_argument("--verify-images", action="store_true",
                   help="open every image: header, and a JPEG's end marker or a PNG's chunks (catches missing, "
                        "empty, foreign and truncated files at two small reads per image); each bad file is listed")
    p.add_argument("--full", action="store_true",
                   help="with --verify-images: decode every image fully (also catches corrupt data; 15-30x slower)")
    p.add_argument("--workers", type=int, default=4, help="threads reading images (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="do not show a progress bar")
    p.set_defaults(func=_check_dataset)

    p = subparsers.add_parser(
        "list-images", help="write the <folder>_images_paths.txt of image folders",
        description="Walk each FOLDER (recursively, .jpg/.jpeg/.png, sorted) and write FOLDER_images_paths.txt "
                    "beside it, one path per line relative to FOLDER. progeo then reads the list instead of "
                    "walking the folder (which matters for millions of images); rerun this command after adding "
                    "or deleting images, or the list is stale.")
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="image folder, e.g. test/database")
    p.set_defaults(func=_list_images)


def _check_dataset(args: argparse.Namespace) -> int:
    from progeo.data.checks import check_dataset

    from progeo.data.checks import ImageChecks
    from progeo.errors import ConfigError

    if args.full and not args.verify_images:
        raise ConfigError("--full goes with --verify-images (it decodes every image fully)")
    config = groups_from_args(args)
    checks = ImageChecks(None if args.all_paths else 1000,
                         ("full" if args.full else "headers") if args.verify_images else None,
                         args.workers, args.progress)
    report = check_dataset(args.path, args.kind, queries=args.queries, positive_dist=args.positive_dist,
                           groups_config=config, max_listed=max(args.max_listed, 0), images=checks)
    print(report.format())
    return 0 if report.ok else 1


def _list_images(args: argparse.Namespace) -> int:
    from progeo.data.image_lists import check_folder, walk_images, write_paths_file
    from progeo.errors import DatasetError

    for folder in args.folders:
        images = walk_images(check_folder(folder))
        if len(images) == 0:
            raise DatasetError(f"no images (.jpg, .jpeg, .png) found in {folder} (searched recursively); "
                               f"nothing to list")
        target = write_paths_file(folder, [images.relative_path(i) for i in range(len(images))])
        print(f"wrote {target}: {len(images):,} images")
    return 0
