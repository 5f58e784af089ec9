"""What an evaluation leaves: the recall table, ``results.json``, prediction grids, the recall plot.

Rows are named ``<dataset>/<query folder>``, where the dataset name is the shortest tail of its
path that tells the test sets apart and is not a generic word (``test``, ``val``, ``images``):
``.../pitts30k/images/test`` -> ``pitts30k/test``.
"""

from __future__ import annotations

import logging
import os
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


def results_json(results, run: dict | None = None) -> dict:
    """``run`` (model, index kind, options...) plus one entry per query folder."""
    return {**(run or {}), "results": [{"name": n, **r.as_dict()} for n, r in zip(row_names(results), results)]}


def write_results(results, out_dir: str | os.PathLike, *, run: dict | None = None, grids: int = 0, grid_k: int = 5,
                  only_wrong: bool = False, plot: bool = False, positive_dist: float = 25.0) -> list[Path]:
    """Write ``results.json`` and, if asked, ``grids/<name>.jpg`` (``grids`` rows each) and
    ``recalls.png`` into ``out_dir``; return the files written."""
    from progeo.eval.visualize import plot_recall_curves, save_prediction_grid

    out = Path(out_dir)
    written = [out / RESULTS_FILE]
    write_json_atomic(written[0], results_json(results, run))
    for name, r in zip(row_names(results), results) if grids > 0 else ():
        path = out / GRIDS_FOLDER / (name.replace("/", "__") + ".jpg")
        save_prediction_grid(path, r.queries.paths, r.database_paths, r.predictions, r.distances_m(),
                             positive_dist=positive_dist, k=grid_k, only_wrong=only_wrong, max_rows=grids)
        written.append(path)
    if plot:
        written.append(out / PLOT_FILE)
        plot_recall_curves({n: r.recall for n, r in zip(row_names(results), results)}, written[-1],
                           title=f"Recall@N ({(run or {}).get('model', '')})")
    return written
