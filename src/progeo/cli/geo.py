"""``progeo zeroshot``, ``progeo probe fit`` and ``progeo probe eval``: GEM city/country classification."""

from __future__ import annotations

import argparse

_MODEL_HELP = ("open_clip ARCH[:TAG], e.g. ViT-B-32:openai (needs its weights in the open_clip cache when offline), "
               "or a backbone such as tiny-rn / tiny-vit with --weights")
_IMAGES_HELP = ("a folder of images (predictions only) or a labels CSV: IM2GPS3k (IMG_ID,LAT,LON), Place Pulse "
                "(image,lat,lon,city[,country]) or a synthetic world's labels.csv (path,lat,lon,city,country)")
_OUT_HELP = ("write predictions.csv (or .json) and metrics.json here; a prediction row holds image, lat, lon (the "
             "prediction), with labels true_lat, true_lon, true_city, true_country and error_km (great circle), "
             "then topN, topN_country and topN's score")
_FORMAT_HELP = "file format of the predictions written to --out: predictions.csv or predictions.json " \
               "(default: %(default)s)"
_IMAGES_DIR_HELP = "folder the image paths of the {} CSV are relative to (default: the CSV's folder)"
_PLACES_HELP = ("candidate places: a CSV (name,country,lat,lon), world:N (built-in GeoNames cities of >= N "
                "inhabitants, offline) or a synthetic world folder / world.json")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("images and features")
    g.add_argument("--flavour", choices=("im2gps3k", "placepulse", "synthetic"), default=None,
                   help="labels CSV flavour (default: detected from the header)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=128, help="images per batch (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=0, help="image decoding processes (default: %(default)s)")
    g.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="an undecodable image stops the run (fail) or is left out and listed (default: %(default)s)")
    g.add_argument("--cache-dir", default=None, help="feature cache folder: image features, and the places' text "
                                                     "features of zeroshot (default: $PROGEO_CACHE_DIR/features "
                                                     "or ~/.cache/progeo/features)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="do not show progress bars")


def _model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, metavar="ARCH[:TAG]", help=_MODEL_HELP)
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="local CLIP weights for --model, e.g. RUN/clip.safetensors of `progeo pretrain`")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "zeroshot", help="GEM zero-shot: classify photos into candidate cities or countries with CLIP",
        description="Score each image against geo-contextualised texts of every candidate place (several templates "
                    "per place, prompt-ensembled) by cosine similarity. Country level: --country-mode aggregate "
                    "(default) takes the max over each country's city scores, which keeps the cities' geographic "
                    "context and predicts a city's coordinates; prompts scores one country-template ensemble per "
                    "country. With a labels CSV, prints top-1/top-5, the shares within 1/25/200/750/2500 km, the "
                    "median km and a per-country confusion table, and writes them to --out DIR.")
    _model(p)
    p.add_argument("--images", required=True, metavar="DIR_OR_CSV", help=_IMAGES_HELP)
    p.add_argument("--images-dir", default=None, metavar="DIR",
                   help="folder the CSV's image paths are relative to (default: the CSV's folder)")
    p.add_argument("--places", default=None, metavar="CSV|world:N|WORLD", help=_PLACES_HELP + " (default: world:100000)")
    p.add_argument("--world-cities", action="store_true", help="use the built-in world cities (see --min-population)")
    p.add_argument("--min-population", type=int, default=100_000, help="for --world-cities (default: %(default)s)")
    p.add_argument("--level", choices=("city", "country"), default="city",
                   help="classify into candidate cities or into their countries (default: %(default)s)")
    p.add_argument("--country-mode", choices=("aggregate", "prompts"), default="aggregate",
                   help="country level: aggregate city scores per country (default: keeps the cities' context and "
                        "gives city coordinates) or country prompts")
    p.add_argument("--country-reduce", choices=("max", "logsumexp"), default="max",
                   help="aggregate mode: max (default; logsumexp favours countries with many cities)")
    p.add_argument("--templates", default=None, metavar="FILE",
                   help="one template per line with {city}/{country} ({country} only with --country-mode prompts); "
                        "default: the built-in set")
    p.add_argument("--top-k", type=int, default=5, help="places per image in the predictions (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR", help=_OUT_HELP)
    p.add_argument("--predictions-format", choices=("csv", "json"), default="csv", help=_FORMAT_HELP)
    _common(p)
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false",
                   help="encode the places' texts on every run instead of reusing (and writing) their cached text "
                        "features in --cache-dir; the cache is keyed by the model's text weights and the exact texts")
    p.set_defaults(func=_zeroshot)

    probe = subparsers.add_parser("probe", help="GEM linear probe: fit or evaluate a classifier on frozen CLIP features",
                                  description="Multinomial logistic regression on cached frozen CLIP image features "
                                              "(city or country classes), L2 strength chosen on a validation split.")
    sub = probe.add_subparsers(dest="probe_command", metavar="ACTION", required=True)
    p = sub.add_parser("fit", help="fit a linear probe on labelled images",
                       description="Fit on --train; choose l2 from --grid on --val (held-out) or on a stratified "
                                   "--val-fraction of --train (then refit on all of it); save to --out DIR as "
                                   "probe.safetensors + probe.json.")
    _model(p)
    p.add_argument("--train", required=True, metavar="CSV", help="labels CSV of the training images")
    p.add_argument("--train-images-dir", default=None, metavar="DIR", help=_IMAGES_DIR_HELP.format("--train"))
    p.add_argument("--val", default=None, metavar="CSV", help="labels CSV of validation images (default: --val-fraction)")
    p.add_argument("--val-images-dir", default=None, metavar="DIR", help=_IMAGES_DIR_HELP.format("--val"))
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="without --val: share of --train held out, stratified by class, to choose l2; the probe "
                        "is then refit on all of --train (default: %(default)s)")
    p.add_argument("--level", choices=("city", "country"), default="city",
                   help="classes of the probe: cities or countries (default: %(default)s)")
    p.add_argument("--places", default=None, metavar="CSV|world:N|WORLD",
                   help=_PLACES_HELP + "; classes and coordinates come from them (needed for GPS-only labels)")
    p.add_argument("--grid", type=float, nargs="+", default=None, metavar="L2",
                   help="l2 values to try (default: 1e-6 1e-5 1e-4 1e-3 1e-2 1e-1); a best value at an edge "
                        "widens the grid by factors of 10 past it (see --widen), with a warning")
    p.add_argument("--widen", type=int, default=3, metavar="N",
                   help="l2 values tried past an edge of --grid when the best lies on it, stopping at the first "
                        "that is not better; 0: never (default: %(default)s)")
    p.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations per l2 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="PROBE", help="folder for probe.safetensors and probe.json")
    _common(p)
    p.set_defaults(func=_probe_fit)

    p = sub.add_parser("eval", help="evaluate a linear probe (or predict with it)",
                       description="Apply a saved probe to a labels CSV (metrics as zero-shot) or a folder of images. "
                                   "The probe's own model is loaded unless --model is given; a model whose image "
                                   "tower differs from the probe's is an error.")
    p.add_argument("--probe", required=True, metavar="PROBE", help="folder written by `progeo probe fit --out`")
    p.add_argument("--images", required=True, metavar="DIR_OR_CSV", help=_IMAGES_HELP)
    p.add_argument("--images-dir", default=None, metavar="DIR", help=_IMAGES_DIR_HELP.format("--images"))
    _model(p, required=False)
    p.add_argument("--places", default=None, metavar="CSV|world:N|WORLD",
                   help="country probes: gives each image's country when the labels have only a city or coordinates")
    p.add_argument("--top-k", type=int, default=5, help="classes per image in the predictions (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR", help=_OUT_HELP)
    p.add_argument("--predictions-format", choices=("csv", "json"), default="csv", help=_FORMAT_HELP)
    _common(p)
    p.set_defaults(func=_probe_eval)


def _shared(args) -> dict:
    return dict(flavour=args.flavour, device=args.device, batch_size=args.batch_size, num_workers=args.num_workers,
                on_bad_image=args.on_bad_image, cache_dir=args.cache_dir, progress=args.progress)


def _locked(out: str | None):
    """The lock of the --out folder for the whole run (one writer per folder), if there is one."""
    import contextlib

    from progeo.locks import folder_lock

    return folder_lock(out, flag="--out") if out else contextlib.nullcontext()


def _print_run(run, out: str | None) -> None:
    from progeo.geo.report import confusion_text, metrics_table

    if run.skipped:
        print(f"left out {len(run.skipped)} undecodable image(s), e.g. {run.skipped[0]}")
    if run.metrics is not None:
        print(metrics_table([(run.name, run.metrics)], markdown=False))
        print()
        print(confusion_text(run.metrics))
    else:
        for row in run.predictions.rows(1)[:10]:
            print(f"{row['image']}: {row['top1']}, {row['top1_country']} ({row['lat']:.4f}, {row['lon']:.4f})")
        if len(run.predictions.paths) > 10:
            print(f"... {len(run.predictions.paths) - 10} more" + ("" if out else "; pass --out DIR to save them all"))
    if out:
        print(f"results written to {out}")


def _zeroshot(args: argparse.Namespace) -> int:
    from progeo.errors import ConfigError
    from progeo.geo.zeroshot import ZeroShotConfig, run_zeroshot

    if args.world_cities and args.places:
        raise ConfigError("give either --places or --world-cities, not both")
    places = f"world:{args.min_population}" if args.world_cities else args.places
    cfg = ZeroShotConfig(model=args.model, weights=args.weights, images=args.images, images_dir=args.images_dir,
                         places=places, min_population=args.min_population, level=args.level,
                         country_mode=args.country_mode, country_reduce=args.country_reduce, templates=args.templates,
                         top_k=args.top_k, out_dir=args.out, predictions_format=args.predictions_format,
                         text_cache=args.text_cache, **_shared(args))
    with _locked(args.out):
        run = run_zeroshot(cfg)
    _print_run(run, args.out)
    return 0


def _probe_fit(args: argparse.Namespace) -> int:
    from progeo.geo.probe import REG_GRID
    from progeo.geo.probe_fit import ProbeFitConfig, run_probe_fit

    cfg = ProbeFitConfig(model=args.model, weights=args.weights, train=args.train, train_images_dir=args.train_images_dir,
                         val=args.val, val_images_dir=args.val_images_dir, val_fraction=args.val_fraction,
                         level=args.level, places=args.places, out=args.out,
                         grid=tuple(args.grid) if args.grid else REG_GRID, widen=max(args.widen, 0),
                         max_iter=args.max_iter, seed=args.seed,
                         **_shared(args))
    with _locked(args.out):
        probe = run_probe_fit(cfg)
    print("l2        val top-1 %")
    for l2, acc in sorted(probe.val_accuracy.items()):
        print(f"{l2:<8g}  {100 * acc:9.2f}{'  <- chosen' if l2 == probe.l2 else ''}")
    print(f"{len(probe.classes)} {probe.classes.level} classes, {probe.info['train_images']} training images; "
          f"probe saved to {probe.source}")
    return 0


def _probe_eval(args: argparse.Namespace) -> int:
    from progeo.geo.probe_fit import ProbeEvalConfig, run_probe_eval

    cfg = ProbeEvalConfig(probe=args.probe, images=args.images, images_dir=args.images_dir, model=args.model,
                          weights=args.weights, places=args.places, top_k=args.top_k, out_dir=args.out,
                          predictions_format=args.predictions_format, **_shared(args))
    with _locked(args.out):
        run = run_probe_eval(cfg)
    _print_run(run, args.out)
    return 0
