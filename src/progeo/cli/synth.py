"""``progeo synth``: generate the synthetic street-view world used by tests, the demo and benchmarks."""

from __future__ import annotations

import argparse

DESCRIPTION = """Render a synthetic visual geo-localization world (Lisbon, Porto, Oslo, Bergen, Kyoto,
Marrakesh) into OUT in the benchmark layout: train/, val/{database,queries}/,
test/{database,queries,queries_night,queries_occlusion}/ with *_images_paths.txt files, images named
@UTM_east@UTM_north@zone@letter@lat@lon@pano_id@tile@heading@pitch@roll@height@timestamp@note@.jpg,
plus captions.tsv, labels.csv (path,lat,lon,city,country), its rows split into labels_train.csv,
labels_val.csv and labels_test.csv (for progeo zeroshot / probe fit / probe eval), and world.json. Presets: tiny (3 cities,
64 px, 1.8 k images), small (6 cities, 128 px, 5.9 k), default (6 cities, 128 px, 11.5 k).
The same seed gives byte-identical files whatever the number of workers. OUT must be new or empty,
or a world made by this command (replaced only with --overwrite)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="generate the synthetic street-view world", description=DESCRIPTION)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--preset", choices=("tiny", "small", "default"), default="default",
                   help="world size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random world: cities, streets and renderings (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="square image size in pixels (default: 64 for tiny, 128 otherwise)")
    p.add_argument("--workers", type=int, default=None,
                   help="rendering processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it holds a world made by progeo synth")
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from progeo.data.synthetic import generate_world

    summary = generate_world(args.out, args.preset, args.seed, image_size=args.image_size, workers=args.workers,
                             overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote the {summary.preset!r} synthetic world (seed {summary.seed}, {summary.image_size} px) "
          f"to {summary.out_dir} in {summary.seconds:.1f} s")
    width = max(len(k) for k in summary.counts)
    for folder, n in summary.counts.items():
        print(f"  {folder:<{width}}  {n:>7,d} images")
    print(f"  {'total':<{width}}  {summary.total_images:>7,d} images")
    print("  cities: " + ", ".join(f"{c['name']} ({c['country']}, UTM {c['utm_zone']})" for c in summary.cities))
    return 0
