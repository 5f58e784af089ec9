"""GEM on the synthetic world: zero-shot and linear probe, city and country level, one table.

:func:`run_gem_report` is what ``progeo demo`` calls after pretraining a tiny CLIP: the
candidate places are the world's cities (``world.json``); the probe is fit on the ``train/``
images with its l2 chosen on the held-out ``val/`` images; both methods are evaluated on
the same ``test/`` images (database and query folders).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from progeo.errors import DatasetError
from progeo.geo.labelled_images import read_labelled_images
from progeo.geo.places import places_from_world
from progeo.geo.report import metrics_table, subset_labels
from progeo.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)


def run_gem_report(world_dir: str | os.PathLike, weights: str | os.PathLike | None, backbone: str = "tiny-vit",
                   out_dir: str | os.PathLike | None = None, *, device: str = "cpu", batch_size: int = 256,
                   num_workers: int = 0, cache_dir: str | os.PathLike | None = None, country_mode: str = "aggregate",
                   grid: Sequence[float] | None = None, max_iter: int = 200, progress: bool = False) -> dict[str, Any]:
    """Zero-shot and linear-probe GEM, city and country level, on a synthetic world's test images.

    Returns ``{"markdown": table, "runs": {name: metrics}, "seconds": {...}, ...}``; with
    ``out_dir``, also writes ``gem_report.md``, ``gem_report.json`` and one folder of
    predictions and metrics per run. ``weights`` is e.g. ``RUN/clip.safetensors`` of
    ``progeo pretrain`` for ``backbone``.
    """
    from progeo.device import resolve_device
    from progeo.geo.features import load_gem_model
    from progeo.geo.probe import REG_GRID
    from progeo.geo.features import FeatureOptions
    from progeo.geo.probe_fit import evaluate_probe, fit_probe
    from progeo.geo.zeroshot import build_zeroshot_classifier, zeroshot_run

    t0 = time.perf_counter()
    world = Path(world_dir)
    places = places_from_world(world)
    labels = read_labelled_images(world / "labels.csv", flavour="synthetic")
    root = os.path.abspath(world)
    split = np.array([os.path.relpath(p, root).split(os.sep, 1)[0] for p in labels.paths])
    parts = {}
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(split == name)
        if rows.size == 0:
            raise DatasetError(f"{world / 'labels.csv'} lists no {name}/ images; regenerate the world with `progeo synth`")
        parts[name] = subset_labels(labels, rows)
    dev = str(resolve_device(device))
    opts = FeatureOptions(dev, batch_size, num_workers, "fail", None if cache_dir is None else str(cache_dir), progress)
    gem = load_gem_model(backbone, weights, dev)
    seconds = {"load": time.perf_counter() - t0}
    test = parts["test"]
    test_paths = [str(p) for p in test.paths]
    test_feats = opts.features(gem, test_paths)
    seconds["test features"] = time.perf_counter() - t0 - sum(seconds.values())
    runs = []
    for level in ("city", "country"):
        t = time.perf_counter()
        clf = build_zeroshot_classifier(gem.clip, places, level, None, country_mode, "max", dev, batch_size,
                                        cache_dir=cache_dir)
        runs.append(zeroshot_run(gem, clf, test_paths, test_feats, test, f"zero-shot {level}"))
        seconds[f"zero-shot {level}"] = time.perf_counter() - t
    for level in ("city", "country"):
        t = time.perf_counter()
        probe = fit_probe(gem, parts["train"], parts["val"], level=level, places=places,
                          grid=tuple(grid) if grid is not None else REG_GRID, max_iter=max_iter, options=opts)
        runs.append(evaluate_probe(probe, gem, test_paths, test, places, name=f"linear probe {level}", options=opts))
        runs[-1].info.update(l2=probe.l2, val_accuracy={f"{k:g}": v for k, v in probe.val_accuracy.items()})
        seconds[f"linear probe {level}"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    table = metrics_table([(r.name, r.metrics) for r in runs])
    note = (f"GEM on {world} ({len(test_paths)} test images, {len(places)} cities in "
            f"{len(places.country_names())} countries; model {gem.spec.describe()}); top-5 is n/a with fewer "
            f"than 5 classes; shares within km and accuracies in %.")
    report = {"markdown": f"{table}\n\n{note}", "runs": {r.name: {**r.metrics, **r.info} for r in runs},
              "seconds": seconds, "world": str(world), "test_images": len(test_paths),
              "train_images": len(parts["train"]), "val_images": len(parts["val"])}
    log.info("GEM report in %.1f s:\n%s", seconds["total"], report["markdown"])
    if out_dir is not None:
        out = Path(out_dir)
        for r in runs:
            r.write(out / r.name.replace(" ", "-"))
        write_text_atomic(out / "gem_report.md", report["markdown"] + "\n")
        write_json_atomic(out / "gem_report.json", {k: v for k, v in report.items() if k != "markdown"})
    return report
