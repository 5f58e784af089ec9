"""Pictures of an evaluation: prediction grids (Pillow) and recall@N curves (matplotlib, Agg).

Evaluation grid: one row per query -- the query, then its top-k database images, each with a
green border when it lies within ``positive_dist`` of the query's true position and a red one
otherwise, and a caption with the distance in metres (and the rank). Rows follow the query
order; with ``only_wrong`` only queries whose top-1 is wrong are drawn; at most ``max_rows``.
Localization grid (:func:`save_localization_grid`): new photos have no known position, so
matches are framed by their distance to the *predicted* position instead, under a legend.
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
ORANGE, PREDICTED_GREY = (235, 140, 20), (90, 90, 90)
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
    if not len(rows):
        ImageDraw.Draw(canvas).text((_GAP, _GAP), "no query to show", fill=(0, 0, 0), font=ImageFont.load_default())
    for row, q in enumerate(rows):
        cells = [(query_paths[q], QUERY_BLUE, f"query {q}")]
        for rank in range(k):
            db_id, dist = int(predictions[q, rank]), float(distances_m[q, rank])
            if db_id < 0:
                continue
            color = GREEN if dist <= positive_dist else RED
            cells.append((database_paths[db_id], color, f"#{rank + 1}  {dist:,.0f} m"))
        _draw_row(canvas, _GAP + row * (cell_h + _GAP), cells, tile_size)
    _save_image(canvas, path)
    return len(rows)


def _draw_row(canvas: Image.Image, top: int, cells: Sequence[tuple], tile_size: tuple[int, int]) -> None:
    """One grid row at ``top``: per cell (image path, frame colour, caption)."""
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    cell_w = tile_size[0] + 2 * _BORDER
    for col, (image_path, color, caption) in enumerate(cells):
        left = _GAP + col * (cell_w + _GAP)
        draw.rectangle((left, top, left + cell_w - 1, top + tile_size[1] + 2 * _BORDER - 1), fill=color)
        canvas.paste(_tile(image_path, tile_size), (left + _BORDER, top + _BORDER))
        draw.text((left + 2, top + tile_size[1] + 2 * _BORDER + 3), _fit(draw, caption, font, cell_w - 4),
                  fill=(0, 0, 0), font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text``, or its end after "...", as much as fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("..." + text, font=font) > width:
        text = text[1:]
    return "..." + text


def save_localization_grid(
    path: str | os.PathLike,
    photo_paths: Sequence[str | os.PathLike],
    labels: Sequence[str],
    match_paths: Sequence[Sequence[str | os.PathLike]],
    distances_m: Sequence[Sequence[float]],
    confidences: Sequence[float],
    positive_dist: float = POSITIVE_DIST_M,
    far_dist: float = 25_000.0,
    max_rows: int = 50,
    tile_size: tuple[int, int] = (160, 120),
) -> int:
    """The ``progeo localize --grid`` picture: a legend, then one row per photo in the given order.

    A row is the photo (blue frame, captioned with ``labels[i]``), then its matches best first:
    match #1 is the predicted position (grey frame, captioned with the confidence); the others
    are framed by their distance ``distances_m[i][j]`` to the *predicted position* -- green
    within ``positive_dist`` (they agree), orange up to ``far_dist``, red farther (another
    city) -- so a prediction the other matches contradict stands out. The true position of a
    new photo is unknown, so no frame says "right". Returns the number of rows drawn.
    """
    if not (len(photo_paths) == len(labels) == len(match_paths) == len(distances_m) == len(confidences)):
        raise ConfigError("photo paths, labels, matches, distances and confidences must have one entry per photo")
    rows = min(len(photo_paths), max_rows)
    k = max([len(m) for m in match_paths[:rows]] + [1])
    cell_w, cell_h = tile_size[0] + 2 * _BORDER, tile_size[1] + 2 * _BORDER + _CAPTION_H
    width = (k + 1) * (cell_w + _GAP) + _GAP
    legend = [(QUERY_BLUE, "photo (file name)"), (PREDICTED_GREY, "#1: best match = predicted position"),
              (GREEN, f"within {positive_dist:g} m of the prediction"),
              (ORANGE, f"{positive_dist:g} m - {far_dist / 1000:g} km from it"), (RED, f"over {far_dist / 1000:g} km from it")]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = ImageFont.load_default()
    placed, x, y = [], _GAP, _GAP
    for color, text in legend:
        w = 14 + int(probe.textlength(text, font=font)) + 3 * _GAP
        if x > _GAP and x + w > width:
            x, y = _GAP, y + _CAPTION_H
        placed.append((x, y, color, text))
        x += w
    legend_h = y + _CAPTION_H
    canvas = Image.new("RGB", (width, legend_h + max(1, rows) * (cell_h + _GAP) + _GAP), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for x, y, color, text in placed:
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=color)
        draw.text((x + 14, y + 1), text, fill=(0, 0, 0), font=font)
    if not rows:
        draw.text((_GAP, legend_h), "no photo to show", fill=(0, 0, 0), font=font)
    for i in range(rows):
        cells = [(photo_paths[i], QUERY_BLUE, labels[i])]
        for rank, (match, dist) in enumerate(zip(match_paths[i], distances_m[i])):
            if rank == 0:
                cells.append((match, PREDICTED_GREY, f"#1 predicted, conf. {confidences[i]:.2f}"))
                continue
            color = GREEN if dist <= positive_dist else ORANGE if dist <= far_dist else RED
            cells.append((match, color, f"#{rank + 1}  {_distance_text(dist)}"))
        _draw_row(canvas, legend_h + i * (cell_h + _GAP), cells, tile_size)
    _save_image(canvas, path)
    return rows


def _distance_text(metres: float) -> str:
    return f"{metres:,.0f} m" if metres < 10_000 else f"{metres / 1000:,.0f} km"


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
