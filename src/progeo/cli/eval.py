"""``progeo eval``, ``progeo index build`` and ``progeo localize``: the benchmark protocol and
localizing new photos (SPEC 1.1)."""

from __future__ import annotations

import argparse
import os

_MODEL_HELP = ("a saved progeo model (folder or .safetensors file), or a backbone name for a not-trained, zero-shot "
               "baseline: RN50:openai, ViT-B/16:openai (weights from the open_clip cache when offline), tiny-vit...")


def _weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="local CLIP weights for a backbone --model (e.g. RN50.pt downloaded elsewhere)")


def _decoding(p: argparse.ArgumentParser, batch_size: int = 64) -> None:
    g = p.add_argument_group("decoding and device")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=batch_size, help="images per batch (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="image decoding processes (default: 0 on CPU, where the model needs the cores; the usable "
                        "cores, at most 8, with a GPU; 0: in the main process)")
    g.add_argument("--on-bad-image", choices=("fail", "skip"), default="fail",
                   help="a truncated or unreadable image stops the run naming the file (fail, default) or is left "
                        "out and counted (skip: out of the database / a miss for a query)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads of torch and faiss (default: theirs)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="do not show progress bars")


def _resize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resize", type=int, nargs="+", default=None, metavar="PX",
                   help="input size: H W, or one number for a square (default: the model's image size)")
    p.add_argument("--resize-mode", choices=("resize", "center-crop"), default="resize",
                   help="resize: stretch to the size, the VG test transform (default); center-crop: keep the aspect")


def _metric(p: argparse.ArgumentParser, what: str) -> None:
    from progeo.eval.search import METRICS

    p.add_argument("--metric", choices=METRICS, default=None,
                   help=f"search metric (default: {what}). cosine: L2-normalized descriptors, scores are cosine "
                        "similarities; l2: raw descriptors by Euclidean distance, as the ProGEO authors evaluate "
                        "(their ViT models), scores are minus the distance. Saved models record theirs: l2 for "
                        "ViT (CLIP-embedding) heads without normalization, cosine for GeM and normalized heads")


LOCALIZE_COLUMNS = """\
output columns (printed table; the same fields in --json and --geojson):
  query          the photo's path as given
  lat, lon       predicted position, WGS84 degrees: the position of the best match
  UTM            the same as UTM east, north (metres) and zone (JSON: utm_east, utm_north,
                 utm_zone_number, utm_zone_letter)
  score          similarity of the photo to its best match, higher is better: cosine
                 similarity, or minus the Euclidean distance for the l2 metric
  confidence     0..1: a vote of the 10 best matches (always 10, whatever --top-k, so its
                 meaning does not change with it), each weighted by exp((score - best score)
                 / 0.05): the mean of the weight shares within 25 m and within 25 km of the
                 predicted position. ~0.1: ten equally good matches in ten places; near 1:
                 they agree, or the best stands out. Ranks right answers above wrong ones
                 better than the similarity gap it replaced (README, bench_confidence.py)
  agreeing       of the runner-up matches (ranks 2-10), how many lie within 25 m of the
                 predicted position (the same place), shown as agreeing/runner_ups
  agreeing_city  of the runner-ups, how many lie within 25 km of it (the same city)
  runner_ups     (JSON) number of runner-ups: 9, fewer if the index has under 10 images
  matches        (JSON, GeoJSON kind "match") the --top-k best database images: rank, score,
                 database_index, lat, lon, path, distance_to_prediction_m (metres from the
                 predicted position)
"""


def register(subparsers) -> None:
    from progeo.eval.search import INDEX_KINDS

    p = subparsers.add_parser(
        "eval", help="recall@N on VG test sets (database + query folders)",
        description="The benchmark protocol: descriptors of the database (once per test set) and of every chosen "
                    "query folder in batches, a faiss search, recall@N (a query is right at N when one of its top N "
                    "lies within --positive-dist metres). Prints a table; writes OUT/results.json and, if asked, "
                    "prediction grids and a recall plot. Use --save-descriptors to keep the descriptors and "
                    "--descriptors to evaluate saved ones without the model.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="M", help=_MODEL_HELP)
    src.add_argument("--descriptors", metavar="DIR",
                     help="evaluate descriptors saved by --save-descriptors (DIR or one of its dataset folders)")
    _weights(p)
    p.add_argument("--test-set", nargs="+", default=[], metavar="DIR",
                   help="test set folders, each with database/ and queries*/ (with --descriptors: picks saved sets)")
    p.add_argument("--queries", nargs="+", default=None, metavar="NAME",
                   help="query folders: names (queries queries_night ...) or 'all' (default: queries, or the only one)")
    p.add_argument("--positive-dist", type=float, default=25.0, metavar="METRES",
                   help="a database image within this distance of a query is a positive (default: %(default)s, "
                        "the paper's value)")
    p.add_argument("--recall-values", type=int, nargs="+", default=[1, 5, 10, 20], metavar="N",
                   help="the N of the recall@N reported (default: 1 5 10 20)")
    _resize(p)
    p.add_argument("--native-size", action="store_true",
                   help="feed test images at their own size (ResNet models; the authors' eval.py protocol, which "
                        "models imported with import-checkpoint record; default: the model's recorded protocol)")
    p.add_argument("--index", choices=INDEX_KINDS, default="flat", help="faiss index kind (default: exact flat)")
    _metric(p, "the model's; with --descriptors, the one saved with them")
    p.add_argument("--query-batch-size", type=int, default=None,
                   help="queries per batch (default: --batch-size; 1: the one-query-at-a-time baseline)")
    p.add_argument("--save-descriptors", metavar="DIR", default=None,
                   help="keep float16 descriptors with their paths in DIR/<dataset>/<database|query folder>/ "
                        "(this run's recalls are not affected; evaluating the saved copy later may differ by "
                        "float16 rounding)")
    p.add_argument("--out", default="progeo_eval", metavar="DIR",
                   help="results folder; results.json gathers the evaluations written there, one entry per model, "
                        "test set and query folder (default: %(default)s)")
    p.add_argument("--grids", type=int, default=0, metavar="N",
                   help="draw N queries with their top-5 per query folder (default: 0, no grids)")
    p.add_argument("--only-wrong", action="store_true", help="grids: only queries whose top-1 is wrong")
    p.add_argument("--plot", action="store_true", help="plot recall@N per query folder to OUT/recalls.png")
    _decoding(p)
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("index", help="build a localization index of a geo-tagged database",
                              description="Localization indexes: descriptors, faiss index, coordinates and model.")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser(
        "build", help="describe a database folder and write an index folder",
        description="Describe every image of --database (named @UTM_east@UTM_north@zone@letter@lat@lon@...@.jpg) and "
                    "write INDEX_DIR: float16 descriptors, a faiss index (saved atomically, loaded memory-mapped), "
                    "the coordinates of every image and the model (a copy, with its reference and config).")
    b.add_argument("--model", required=True, metavar="M", help=_MODEL_HELP)
    _weights(b)
    b.add_argument("--database", required=True, metavar="DIR", help="folder of geo-tagged images")
    b.add_argument("--out", required=True, metavar="INDEX_DIR", help="index folder to write")
    b.add_argument("--overwrite", action="store_true",
                   help="replace the index already in INDEX_DIR (without it, an existing index is left alone)")
    b.add_argument("--index", choices=INDEX_KINDS, default="flat",
                   help="faiss index kind (default: flat; ivfpq for millions of images)")
    _metric(b, "the model's; saved with the index")
    _resize(b)
    _decoding(b)
    b.set_defaults(func=_index_build)

    p = subparsers.add_parser(
        "localize", help="predict where photos were taken from an index", epilog=LOCALIZE_COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each photo (in the order given; a folder's images in natural order: photo2 before "
                    "photo10): the position of its best match (lat/lon and UTM), a confidence from how well "
                    "its 10 best matches agree with that position, and the top-k matches with their distances "
                    "to the predicted position.")
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="image files or folders of images")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="a folder written by `progeo index build`")
    p.add_argument("--top-k", type=int, default=5,
                   help="matches shown per photo (default: %(default)s); the confidence always uses the 10 best")
    _metric(p, "the index's; another one re-indexes its saved descriptors in memory")
    p.add_argument("--json", metavar="FILE", help="write the predictions (the fields below, with matches) as JSON")
    p.add_argument("--geojson", metavar="FILE", help="write predictions and matches as GeoJSON points")
    p.add_argument("--map", metavar="FILE.html",
                   help="write an interactive map (folium): photo markers red / orange / green for a confidence "
                        "below 0.3 / below 0.6 / above; matches coloured as in the grid")
    p.add_argument("--grid", metavar="FILE.jpg",
                   help="write each photo (labelled by its file name) with its matches: #1 is the predicted position, "
                        "the others framed green within 25 m of it, orange within 25 km, red farther (legend inside)")
    _decoding(p, batch_size=32)
    p.set_defaults(func=_localize)


def _setup(args) -> str:
    """Threads, and the device as a string; returns the device."""
    from progeo.device import resolve_device

    if args.threads is not None:
        import faiss
        import torch

        torch.set_num_threads(max(1, args.threads))
        faiss.omp_set_num_threads(max(1, args.threads))
    return str(resolve_device(args.device))


def _workers(args, device: str) -> int:
    """Decoding processes: as asked; else 0 when the model runs on the CPU (measured with
    benchmarks/bench_eval.py: workers there compete with the model for the same cores and were
    slower), else the usable cores up to 8 (decoding overlaps the accelerator's work)."""
    if args.num_workers is not None:
        return args.num_workers
    if device == "cpu":
        return 0
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _size(args):
    from progeo.errors import ConfigError

    if args.resize is None:
        return None
    if len(args.resize) not in (1, 2) or min(args.resize) < 1:
        raise ConfigError(f"--resize {' '.join(map(str, args.resize))}: give H W or one positive size")
    return (args.resize[0], args.resize[-1])


def _eval(args: argparse.Namespace) -> int:
    """The evaluation, holding the locks of --out and --save-descriptors (one writer per folder)."""
    import contextlib

    from progeo.locks import folder_lock

    with contextlib.ExitStack() as stack:
        stack.enter_context(folder_lock(args.out, flag="--out"))
        if args.save_descriptors:
            stack.enter_context(folder_lock(args.save_descriptors, flag="--save-descriptors"))
        return _run_eval(args)


def _run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from progeo.errors import ConfigError
    from progeo.eval.evaluate import EvalConfig, evaluate, saved_descriptor_folders, saved_folder_names
    from progeo.eval.results import format_results_table, write_results
    from progeo.eval.search import IndexConfig
    from progeo.models.checkpoints import load_model_or_backbone

    device = _setup(args)
    if args.native_size and args.resize:
        raise ConfigError("--native-size and --resize contradict each other; give one")
    cfg = EvalConfig(positive_dist=args.positive_dist, recall_values=tuple(args.recall_values), batch_size=args.batch_size,
                     query_batch_size=args.query_batch_size, num_workers=_workers(args, device), device=device,
                     image_size=_size(args), resize_mode=args.resize_mode, on_bad_image=args.on_bad_image,
                     native_size=True if args.native_size else None,
                     index=IndexConfig(kind=args.index, metric=args.metric),
                     k=max([*args.recall_values, 5 if args.grids else 1]),
                     progress=args.progress)
    queries = args.queries or [None]
    results = []
    if args.descriptors:
        for folder in saved_descriptor_folders(args.descriptors, args.test_set):
            results += evaluate(folder, None, queries, cfg)
        model_name = results[0].queries.model
    else:
        if not args.test_set:
            raise ConfigError("--test-set DIR is needed with --model (a folder with database/ and queries*/)")
        model = load_model_or_backbone(args.model, device, cfg.image_size, args.weights)
        model_name = args.model
        names = saved_folder_names(args.test_set)
        for root in args.test_set:
            save = Path(args.save_descriptors) / names[str(root)] if args.save_descriptors else None
            results += evaluate(model, root, queries, cfg, model_name=model_name, save_dir=save)
    metric = results[0].metric
    print(format_results_table(results, title=f"{model_name} ({args.index} index, {metric} metric, "
                                              f"positives within {args.positive_dist:g} m)"))
    run = {"model": model_name, "index": args.index, "metric": metric, "positive_dist_m": args.positive_dist,
           "query_batch_size": args.query_batch_size or args.batch_size, "device": device}
    written = write_results(results, args.out, run=run, grids=args.grids, only_wrong=args.only_wrong, plot=args.plot,
                            positive_dist=args.positive_dist)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from progeo.eval.index import Index
    from progeo.eval.search import IndexConfig
    from progeo.models.checkpoints import load_model_or_backbone

    device = _setup(args)
    model = load_model_or_backbone(args.model, device, _size(args), args.weights)
    index = Index.build(model, args.database, args.out, index=IndexConfig(kind=args.index, metric=args.metric),
                        model_ref=args.model, overwrite=args.overwrite, batch_size=args.batch_size, device=device,
                        num_workers=_workers(args, device), on_bad_image=args.on_bad_image, image_size=_size(args),
                        resize_mode=args.resize_mode, progress=args.progress)
    seconds, skipped = index.info["seconds"], index.info["skipped_paths"]
    print(f"indexed {len(index):,d} images ({args.index}, {index.metric} metric) in "
          f"{seconds['describe'] + seconds['index']:.1f} s ({len(index) / max(seconds['describe'], 1e-9):.0f} images/s "
          f"described) -> {index.path}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    return 0


def _localize(args: argparse.Namespace) -> int:
    from progeo.eval.localize_core import (SCORE_MEANING, format_predictions_table, write_geojson, write_map,
                                           write_predictions_json)
    from progeo.data.image_lists import expand_photo_paths
    from progeo.eval.localizer import Localizer, save_match_grid

    device = _setup(args)
    localizer = Localizer.from_index(args.index, device=device, batch_size=args.batch_size,
                                     num_workers=_workers(args, device), on_bad_image=args.on_bad_image,
                                     progress=args.progress, metric=args.metric)
    predictions = localizer.localize_files(expand_photo_paths(args.photos), top_k=args.top_k)
    if predictions:
        print(format_predictions_table(predictions))
        print(f"score: {SCORE_MEANING[localizer.metric]} ({localizer.metric} metric)")
    if localizer.skipped_paths:
        print(f"skipped {len(localizer.skipped_paths)} unreadable photo(s): " + ", ".join(localizer.skipped_paths[:5]))
    if args.json:
        write_predictions_json(predictions, args.json, metric=localizer.metric)
        print(f"wrote {args.json}")
    for path, write in ((args.geojson, write_geojson), (args.map, write_map)):
        if path:
            write(predictions, path)
            print(f"wrote {path}")
    if args.grid:
        save_match_grid(predictions, args.grid, top_k=args.top_k)
        print(f"wrote {args.grid}")
    return 0
