"""Pictures of an evaluation: prediction grids (Pillow) and recall@N curves (matplotlib, Agg).

Grid: one row per query -- the query, then its top-k database images, each with a green
border when it lies within ``positive_dist`` of the query and a red one otherwise, and a
caption with the distance in metres (and the rank). Rows follow the query order; with
``only_wrong`` only queries whose top-1 is wrong are drawn; at most ``max_rows`` rows.
An unreadable image is drawn as a grey tile saying so: a picture never stops an evaluation.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from progeo.errors import ConfigError
from progeo.eval.recall import POSITIVE_DIST_M, RecallResult
from progeo.io import atomic_path

logger = logging.getLogger(__name__)

GREEN, RED, QUERY_BLUE = (40, 170, 60), (210, 40, 40), (40, 90, 200)
_CAPTION_H, _BORDER, _GAP = 18, 4, 6


def _tile(path: str | os.PathLike, size: tuple[int, int]) -> Image.Image:
    """Thumbnail of ``path`` fitted into ``size`` (w, h) on a white background."""
    tile = Image.new("RGB", size, (255, 255, 255))
    try:
        with Image.open(path) as img:
            img.draft("RGB", size)
            img = img.convert("RGB")
            img.thumbnail(size)
            tile.paste(img, ((size[0] - img.width) // 2, (size[1] - img.height) // 2))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        logger.warning("cannot draw %s in the grid: %s", path, exc)
        tile.paste((160, 160, 160), (0, 0) + size)
        ImageDraw.Draw(tile).text((4, 4), "unreadable", fill=(0, 0, 0))
    return tile


def grid_rows(distances_m: np.ndarray, positive_dist: float, only_wrong: bool, max_rows: int) -> np.ndarray:
    """Indices of the queries drawn in the grid."""
    rows = np.arange(len(distances_m))
    if only_wrong:
        rows = rows[~(distances_m[:, 0] <= positive_dist)]
    return rows[:max_rows]


def save_prediction_grid(
    path: str | os.PathLike,
    query_paths: Sequence[str | os.PathLike],
    database_paths: Sequence[str | os.PathLike],
    predictions: np.ndarray,
    distances_m: np.ndarray,
    positive_dist: float = POSITIVE_DIST_M,
    k: int = 5,
    only_wrong: bool = False,
    max_rows: int = 20,
    tile_size: tuple[int, int] = (160, 120),
) -> int:
    """Draw the grid to ``path`` (PNG or JPEG by suffix); return the number of rows drawn.

    ``predictions`` and ``distances_m`` are Q x K (see
    :func:`progeo.eval.recall.prediction_distances`); only the first ``k`` columns are shown.
    The image is ``(k + 1) * (tile_w + 2 * border + gap) + gap`` pixels wide and
    ``rows * (tile_h + 2 * border + caption + gap) + gap`` high.
    """
    predictions = np.asarray(predictions)
    distances_m = np.asarray(distances_m, dtype=float)
    if predictions.shape != distances_m.shape or predictions.ndim != 2 or len(predictions) != len(query_paths):
        raise ConfigError(
            f"predictions {predictions.shape} and distances {distances_m.shape} must both be "
            f"{len(query_paths)} queries x K"
        )
    k = min(k, predictions.shape[1])
    rows = grid_rows(distances_m, positive_dist, only_wrong, max_rows)
    cell_w, cell_h = tile_size[0] + 2 * _BORDER, tile_size[1] + 2 * _BORDER + _CAPTION_H
    width = (k + 1) * (cell_w + _GAP) + _GAP
    height = max(1, len(rows)) * (cell_h + _GAP) + _GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if not len(rows):
        draw.text((_GAP, _GAP), "no query to show", fill=(0, 0, 0), font=font)
    for row, q in enumerate(rows):
        top = _GAP + row * (cell_h + _GAP)
        cells = [(query_paths[q], QUERY_BLUE, f"query {q}")]
        for rank in range(k):
            db_id, dist = int(predictions[q, rank]), float(distances_m[q, rank])
            if db_id < 0:
                continue
            color = GREEN if dist <= positive_dist else RED
            cells.append((database_paths[db_id], color, f"#{rank + 1}  {dist:,.0f} m"))
        for col, (image_path, color, caption) in enumerate(cells):
            left = _GAP + col * (cell_w + _GAP)
            draw.rectangle((left, top, left + cell_w - 1, top + tile_size[1] + 2 * _BORDER - 1), fill=color)
            canvas.paste(_tile(image_path, tile_size), (left + _BORDER, top + _BORDER))
            draw.text((left + 2, top + tile_size[1] + 2 * _BORDER + 3), caption, fill=(0, 0, 0), font=font)
    _save_image(canvas, path)
    return len(rows)


def _save_image(image: Image.Image, path: str | os.PathLike) -> None:
    suffix = os.fspath(path).rsplit(".", 1)[-1].lower()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}.get(suffix)
    if fmt is None:
        raise ConfigError(f"cannot write {path}: use a .png or .jpg file name")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)


def plot_recall_curves(
    curves: Mapping[str, RecallResult | Mapping[int, float]],
    path: str | os.PathLike,
    title: str = "Recall@N",
    size_px: tuple[int, int] = (800, 500),
    dpi: int = 100,
) -> None:
    """One recall@N curve per query folder / method, saved as a PNG of ``size_px`` pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ConfigError("no recall curve to plot: give at least one query folder or method")
    figure = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, curve in curves.items():
        recalls = curve.recalls if isinstance(curve, RecallResult) else curve
        ns = sorted(recalls)
        axes.plot(ns, [recalls[n] for n in ns], marker="o", label=name)
    axes.set_xscale("log")
    all_ns = sorted({n for c in curves.values() for n in (c.recalls if isinstance(c, RecallResult) else c)})
    axes.set_xticks(all_ns, [str(n) for n in all_ns])
    axes.set_xlabel("N (number of retrieved database images)")
    axes.set_ylabel("recall@N (%)")
    axes.set_ylim(0, 100)
    axes.grid(True, alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
