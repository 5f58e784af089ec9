"""What an evaluation leaves: the recall table, ``results.json``, prediction grids, the recall plot.

Rows are named ``<dataset>/<query folder>``, where the dataset name is the shortest tail of its
path that tells the test sets apart and is not a generic word (``test``, ``val``, ``images``):
``.../pitts30k/images/test`` -> ``pitts30k/test``.

``results.json`` collects every evaluation written to its folder: one entry per model, test set
and query folder, each with the options of the run that made it (``run``). A new evaluation adds
its entries and replaces only those of the same model, test set and query folder, so evaluations
of different query folders (or models) into one ``--out`` add up; the top-level keys are the
options of the latest evaluation. The folder is locked while it is written (:mod:`progeo.locks`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

from progeo.eval.recall import format_recall_table
from progeo.io import write_json_atomic

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PLOT_FILE = "recalls.png"
GRIDS_FOLDER = "grids"
_GENERIC = {"test", "val", "validation", "train", "images", "database", "processed", "data", "datasets"}


def dataset_names(roots: Sequence[str | os.PathLike]) -> dict[str, str]:
    """A short, distinct name per dataset root (keys: ``str(root)``)."""
    parts = {str(r): Path(os.path.abspath(r)).parts[1:] for r in roots}
    least = {r: next((d for d in range(1, len(p) + 1) if p[-d].lower() not in _GENERIC), len(p)) for r, p in parts.items()}
    for extra in range(max((len(p) for p in parts.values()), default=0) + 1):
        names = {r: "/".join(x for x in p[-(least[r] + extra):] if x.lower() != "images") or "/"
                 for r, p in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {r: r for r in parts}


def row_names(results) -> list[str]:
    names = dataset_names(list(dict.fromkeys(r.dataset for r in results)))
    return [f"{names[r.dataset]}/{r.queries_folder}" for r in results]


def format_results_table(results, title: str = "") -> str:
    """Recall@N table, one row per test set and query folder (skipped images noted below)."""
    table = format_recall_table(list(zip(row_names(results), (r.recall for r in results))), title=title)
    notes = [f"{name}: {len(r.database.skipped)} database / {len(r.queries.skipped)} query image(s) skipped "
             f"(unreadable; skipped queries count as misses)"
             for name, r in zip(row_names(results), results) if len(r.database.skipped) or len(r.queries.skipped)]
    return "\n".join([table, *notes])


def results_json(results, run: dict | None = None, earlier: dict | None = None) -> dict:
    """``run`` (model, index kind, options...) plus one entry per query folder (with ``run``), after the
    entries of ``earlier`` (a previous ``results.json``) that these results do not replace."""
    entries = [{"name": n, **r.as_dict(), "run": dict(run or {})} for n, r in zip(row_names(results), results)]
    new = {_key(e) for e in entries}
    kept = [e for e in (earlier or {}).get("results", []) if isinstance(e, dict) and _key(e) not in new]
    return {**(run or {}), "results": kept + entries}


def _key(entry: dict) -> tuple:
    return entry.get("model"), entry.get("dataset"), entry.get("queries_folder")


def _read_earlier(path: Path) -> dict:
    """The ``results.json`` already in the folder ({} when there is none); a damaged one is kept aside."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("results", []), list):
            return data
    except (OSError, ValueError):
        pass
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    log.warning("%s is not a progeo results file; moved it to %s and started a new one", path, aside)
    return {}


def write_results(results, out_dir: str | os.PathLike, *, run: dict | None = None, grids: int = 0, grid_k: int = 5,
                  only_wrong: bool = False, plot: bool = False, positive_dist: float = 25.0) -> list[Path]:
    """Merge the results into ``results.json`` (see the module docstring) and, if asked, write
    ``grids/<name>.jpg`` (``grids`` rows each) and ``recalls.png`` (every entry of ``results.json``)
    into ``out_dir``, holding its lock; return the files written."""
    from progeo.eval.visualize import save_prediction_grid
    from progeo.locks import folder_lock

    out = Path(out_dir)
    written = [out / RESULTS_FILE]
    with folder_lock(out, flag="--out"):
        merged = results_json(results, run, _read_earlier(written[0]))
        write_json_atomic(written[0], merged)
        for name, r in zip(row_names(results), results) if grids > 0 else ():
            path = out / GRIDS_FOLDER / (name.replace("/", "__") + ".jpg")
            save_prediction_grid(path, r.queries.paths, r.database_paths, r.predictions, r.distances_m(),
                                 positive_dist=positive_dist, k=grid_k, only_wrong=only_wrong, max_rows=grids)
            written.append(path)
        if plot:
            written.append(out / PLOT_FILE)
            _plot(merged["results"], written[-1])
    return written


def _plot(entries: list[dict], path: Path) -> None:
    """Recall@N curves of all entries, labelled by name (and model when there are several models)."""
    from progeo.eval.visualize import plot_recall_curves

    models = list(dict.fromkeys(str(e.get("model", "")) for e in entries))
    curves = {}
    for e in entries:
        label = e.get("name", "?") + (f" ({e.get('model')})" if len(models) > 1 else "")
        curves[label] = {int(k[2:]): float(v) for k, v in e.get("recalls", {}).items() if k.startswith("R@")}
    plot_recall_curves(curves, path, title=f"Recall@N ({', '.join(models)})")
