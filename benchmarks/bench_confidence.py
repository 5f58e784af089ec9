"""Does ``progeo localize``'s confidence rank right answers above wrong ones?

On a synthetic world (``progeo synth``), the test database becomes a localization index and
every test query folder (day ``queries``, ``queries_night``, ``queries_occlusion``) is
localized. Answers are ranked by a confidence, most confident first; the accuracy of the top
c % of answers, over coverage c from 0 to 100 %, is the accuracy-coverage curve, and its area
(AUC, %) tells how well the confidence sorts right from wrong: the accuracy itself (over all
answers) when the ranking is random, 100 % only when every right answer ranks above every
wrong one ("oracle": the best any ranking of these answers can do). An answer is right when the
predicted position lies within 25 m of the photo's true position ("place"), or within 25 km
("city": the world's cities lie 270 km or more apart).

Compared: progeo's confidence (:mod:`progeo.eval.confidence`) and the similarity gap it replaced
(best score minus the best score of a match farther than 25 m from the best, within the shown
``--top-k`` 5 matches; the 5th score when all 5 agree).

The model is a tiny CLIP (tiny-rn) pretrained on the world's captions, the demo's zero-shot row
(not trained on places), or ``--model`` (a saved progeo model, e.g. a demo's stage-2 model).
World and pretrained weights are cached in ``--cache``.

    .venv/bin/python benchmarks/bench_confidence.py                 # default world, ~3 CPU minutes
    .venv/bin/python benchmarks/bench_confidence.py --preset tiny   # fast, 3 cities
    .venv/bin/python benchmarks/bench_confidence.py --model demo_out/stage2-progeo/best_model
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUERY_FOLDERS = ("queries", "queries_night", "queries_occlusion")
PLACE_M, CITY_M = 25.0, 25_000.0


def prepare_world(preset: str, cache: Path, seed: int = 0) -> Path:
    from progeo.data.synthetic import generate_world

    world = cache / f"world-{preset}-seed{seed}"
    if not (world / "world.json").is_file():
        print(f"generating the {preset!r} world into {world} ...", flush=True)
        generate_world(world, preset, seed, overwrite=world.exists())
    return world


def pretrained_model(world: Path, cache: Path, epochs: int, device: str, seed: int = 0):
    """The demo's zero-shot model: tiny-rn pretrained on the world's captions (cached)."""
    from progeo.config import PretrainConfig
    from progeo.models import build_model
    from progeo.train.pretrain import CHECKPOINT_NAME, run_pretrain

    run = cache / f"pretrain-{world.name}-{epochs}ep"
    checkpoint = run / CHECKPOINT_NAME
    if not checkpoint.is_file():
        print(f"pretraining tiny-rn for {epochs} epochs into {run} ...", flush=True)
        checkpoint = run_pretrain(PretrainConfig(world=str(world), backbone="tiny-rn", out_dir=str(run), epochs=epochs,
                                                 device=device, progress=False, tensorboard=False, threads=1,
                                                 overwrite=True)).checkpoint
    torch.manual_seed(seed)  # the descriptor head (GeM + linear) is not in the CLIP checkpoint: a seeded random init
    return build_model("tiny-rn", weights=str(checkpoint), image_size=96, normalization="imagenet", device=device)


def old_gap(prediction, positive_dist: float = PLACE_M) -> float:
    """The confidence localize printed before: best score minus the best score of a shown match
    farther than ``positive_dist`` from the best (the last shown score when all agree)."""
    scores = np.array([m.score for m in prediction.matches])
    far = np.array([m.distance_to_prediction_m > positive_dist for m in prediction.matches])
    return float(scores[0] - (scores[far].max() if far.any() else scores[-1]))


def errors_m(predictions, truth) -> np.ndarray:
    """Metres from each predicted position to the photo's true one (UTM in one zone, else great circle)."""
    from progeo.eval.localize_core import haversine_m

    out = np.empty(len(predictions))
    for i, p in enumerate(predictions):
        if (p.utm_zone_number, p.utm_zone_letter >= "N") == (truth.zone_number[i], truth.zone_letter[i] >= "N"):
            out[i] = np.hypot(p.utm_east - truth.east[i], p.utm_north - truth.north[i])
        else:
            out[i] = haversine_m(p.lat, p.lon, truth.lat[i], truth.lon[i])
    return out


def measure(model, world: Path, index_dir: Path, top_k: int, device: str) -> dict:
    """Per query folder: old gap, new confidence, right at the place / in the city."""
    from progeo.data.test_sets import TestSet
    from progeo.eval.index import Index, coordinates_from_names
    from progeo.eval.localizer import Localizer

    Index.build(model, world / "test" / "database", index_dir, model_ref="bench", device=device, progress=False)
    localizer = Localizer.from_index(index_dir, model=model, device=device, batch_size=128)
    folders = {}
    for name in QUERY_FOLDERS:
        paths = list(TestSet(world / "test", queries_folder=name).queries_paths)
        predictions = localizer.localize_files(paths, top_k=top_k)
        err = errors_m(predictions, coordinates_from_names(paths))
        folders[name] = {"gap": np.array([old_gap(p) for p in predictions]),
                         "confidence": np.array([p.confidence for p in predictions]),
                         "place": err <= PLACE_M, "city": err <= CITY_M}
    folders["all"] = {k: np.concatenate([f[k] for f in folders.values()]) for k in folders[QUERY_FOLDERS[0]]}
    return folders


def table(folders: dict) -> str:
    from progeo.eval.confidence import accuracy_coverage_auc as auc

    lines = ["| queries | photos | level | right % | AUC: similarity gap (old) | AUC: confidence (new) | AUC: oracle |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, f in folders.items():
        for level in ("place", "city"):
            right = f[level]
            lines.append(f"| {name} | {len(right)} | {level} | {100 * right.mean():.1f} | {auc(f['gap'], right):.1f} | "
                         f"{auc(f['confidence'], right):.1f} | {auc(right.astype(float), right):.1f} |")
    return "\n".join(lines)


def bands(f: dict, edges=(0.0, 0.3, 0.6, 1.0)) -> str:
    """Right answers per confidence band (all folders): what a confidence value means here."""
    lines = ["| confidence | photos | right at the place % | right in the city % |", "|---|---:|---:|---:|"]
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (f["confidence"] >= lo) & ((f["confidence"] < hi) | (hi == edges[-1]))
        share = (lambda r: f"{100 * r[m].mean():.1f}") if m.any() else (lambda r: "-")
        lines.append(f"| {lo:g}-{hi:g} | {int(m.sum())} | {share(f['place'])} | {share(f['city'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=("tiny", "small", "default"), help="synthetic world")
    parser.add_argument("--world", default=None, metavar="DIR", help="an existing `progeo synth` world instead")
    parser.add_argument("--model", default=None, help="a saved progeo model (default: tiny-rn pretrained on captions)")
    parser.add_argument("--pretrain-epochs", type=int, default=4, help="caption pretraining epochs (default: the demo's 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pretrained model's descriptor head (default: 0)")
    parser.add_argument("--top-k", type=int, default=5, help="matches shown, as localize's --top-k (default: %(default)s)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "progeo_bench_confidence"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    start = time.perf_counter()
    world = Path(args.world) if args.world else prepare_world(args.preset, cache)
    if args.model:
        from progeo.models import load_model

        model, model_name = load_model(args.model, args.device), args.model
    else:
        model = pretrained_model(world, cache, args.pretrain_epochs, args.device, args.seed)
        model_name = f"tiny-rn pretrained on captions ({args.pretrain_epochs} epochs), zero-shot, head seed {args.seed}"
    with tempfile.TemporaryDirectory() as tmp:
        folders = measure(model, world, Path(tmp) / "index", args.top_k, args.device)
    print(f"{model_name} on {world.name}; right = within {PLACE_M:g} m (place) / {CITY_M / 1000:g} km (city); "
          f"AUC = area under accuracy vs coverage, answers ranked by each score (%)")
    print(table(folders))
    print(bands(folders["all"]))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
