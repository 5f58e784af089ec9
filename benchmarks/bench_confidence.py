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


def pretrained_model(world: Path, cache: Path, epochs: int, device: str):
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
    return build_model("tiny-rn", weights=str(checkpoint), image_size=96, normalization="imagenet", device=device)


def localize_world(model, world: Path, out: Path, depth: int, device: str):
    """Index the test database, localize every query folder; per folder the raw top-``depth``
    (ids, scores), the database coordinates and each query's true coordinates."""
    from progeo.eval.localize_core import DatabaseCoordinates
    from progeo.eval.localizer import Localizer, build_index_folder, coordinates_from_names
    from progeo.data.test_sets import TestSet

    build_index_folder(model, world / "test" / "database", out, model_ref="bench", device=device, progress=False)
    localizer = Localizer.from_index(out, device=device, batch_size=128)
    folders = {}
    for name in QUERY_FOLDERS:
        paths = list(TestSet(world / "test", queries_folder=name).queries_paths)
        preds = localizer.localize_files(paths, top_k=depth)
        ids = np.array([[m.database_index for m in p.matches] for p in preds])
        scores = np.array([[m.score for m in p.matches] for p in preds])
        truth = coordinates_from_names(paths)
        folders[name] = (preds, ids, scores, truth)
    return localizer.coordinates, folders
