"""``progeo check-dataset``: validate a train or test folder, print counts and every problem."""

from __future__ import annotations

import argparse

DESCRIPTION = """Validate a visual geo-localization dataset folder and print its counts (images,
classes, groups, images per class, database and query sizes, queries without positives) and
every problem found (malformed names, missing paths, empty folders, unreadable paths files).
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
                   help="radius of a positive (default: %(default)s)")
    p.add_argument("--M", type=int, default=10, help="class cell size in metres (default: %(default)s)")
    p.add_argument("--alpha", type=int, default=30, help="class heading bin in degrees (default: %(default)s)")
    p.add_argument("--N", type=int, default=5, help="cells between classes of a group (default: %(default)s)")
    p.add_argument("--L", type=int, default=2, help="heading bins between classes of a group (default: %(default)s)")
    p.add_argument("--min-images-per-class", type=int, default=10, help="smaller classes are dropped (default: %(default)s)")
    p.add_argument("--max-listed", type=int, default=20, help="malformed names listed per folder (default: %(default)s)")
    p.add_argument("--all-paths", action="store_true",
                   help="check that every entry of a paths file exists (default: a sample of 1000)")
    p.set_defaults(func=_check_dataset)


def _check_dataset(args: argparse.Namespace) -> int:
    from progeo.data.checks import check_dataset
    from progeo.data.groups import GroupsConfig

    config = GroupsConfig(M=args.M, alpha=args.alpha, N=args.N, L=args.L,
                          min_images_per_class=args.min_images_per_class)
    report = check_dataset(args.path, args.kind, queries=args.queries, positive_dist=args.positive_dist,
                           groups_config=config, max_listed=max(args.max_listed, 0),
                           paths_sample=None if args.all_paths else 1000)
    print(report.format())
    return 0 if report.ok else 1
