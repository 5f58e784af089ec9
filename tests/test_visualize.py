import numpy as np
import pytest
from PIL import Image

from progeo.errors import ConfigError
from progeo.eval.recall import RecallResult
from progeo.eval.visualize import GREEN, RED, save_prediction_grid, plot_recall_curves

TILE = (80, 60)


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"img_{i}.jpg"
        Image.new("RGB", (200, 150), (i * 40, 100, 200 - i * 30)).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    return paths, str(broken)


def _border_color(grid: Image.Image, row: int, col: int) -> tuple[int, int, int]:
    cell_w, cell_h = TILE[0] + 8, TILE[1] + 8 + 18
    return grid.getpixel((6 + col * (cell_w + 6) + 1, 6 + row * (cell_h + 6) + 1))


def test_grid_size_and_colours(tmp_path, images):
    paths, broken = images
    queries = [paths[0], paths[1], broken]
    database = paths[2:] + [broken]
    predictions = np.array([[0, 1, 4], [2, 3, 0], [1, 0, 2]])
    distances = np.array([[3.0, 40.0, 25.0], [120.0, 10.0, 8.0], [30.0, 26.0, 900.0]])
    out = tmp_path / "grid.png"
    rows = save_prediction_grid(out, queries, database, predictions, distances, k=3, tile_size=TILE)
    assert rows == 3
    grid = Image.open(out)
    assert grid.size == (4 * (TILE[0] + 8 + 6) + 6, 3 * (TILE[1] + 8 + 18 + 6) + 6)
    assert _border_color(grid, 0, 1) == GREEN and _border_color(grid, 0, 2) == RED
    assert _border_color(grid, 0, 3) == GREEN  # exactly 25 m counts
    assert _border_color(grid, 1, 1) == RED and _border_color(grid, 1, 2) == GREEN


def test_grid_only_wrong_and_row_cap(tmp_path, images):
    paths, _ = images
    predictions = np.tile(np.arange(3), (5, 1))
    distances = np.array([[1.0] * 3, [99.0] * 3, [2.0] * 3, [50.0] * 3, [70.0] * 3])
    out = tmp_path / "wrong.jpg"
    rows = save_prediction_grid(out, paths[:5], paths, predictions, distances, k=2, only_wrong=True, max_rows=2, tile_size=TILE)
    assert rows == 2
    grid = Image.open(out)
    assert grid.format == "JPEG" and grid.size == (3 * (TILE[0] + 14) + 6, 2 * (TILE[1] + 32) + 6)
    with pytest.raises(ConfigError, match="must both be"):
        save_prediction_grid(out, paths[:4], paths, predictions, distances)
    with pytest.raises(ConfigError, match=".png or .jpg"):
        save_prediction_grid(tmp_path / "grid.gif", paths[:5], paths, predictions, distances)


def test_recall_curves_png(tmp_path):
    out = tmp_path / "curves.png"
    plot_recall_curves(
        {
            "queries_v1": RecallResult({1: 80.0, 5: 90.0, 10: 93.0, 20: 95.0}, 1000),
            "queries_night": {1: 40.0, 5: 55.0, 10: 60.0, 20: 66.0},
        },
        out,
        size_px=(640, 400),
    )
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (640, 400)
    colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
    assert len(colours) > 3  # axes, two coloured curves, text: not a blank canvas
    with pytest.raises(ConfigError, match="no recall curve"):
        plot_recall_curves({}, out)


def test_localization_grid_frames_by_distance_to_the_prediction(tmp_path, images):
    """Match #1 is the prediction (grey, never "right"); the others are framed by their distance
    to it: a match 300 km away is red, not green; rows are labelled by the given names in order."""
    from PIL import ImageDraw, ImageFont

    from progeo.eval.visualize import ORANGE, PREDICTED_GREY, QUERY_BLUE, _fit, save_localization_grid

    paths, _ = images
    labels = ["photo1.jpg", "photo2.jpg", "photo10.jpg"]
    matches = [paths[2:6], paths[3:5], paths[1:3]]
    distances = [[0.0, 10.0, 300_000.0, 5_000.0], [0.0, 400_000.0], [0.0, 25.0]]
    out = tmp_path / "grid.png"
    assert save_localization_grid(out, paths[:3], labels, matches, distances, [0.9, 0.1, 0.5], tile_size=TILE) == 3
    grid = Image.open(out).convert("RGB")
    cell_w, cell_h = TILE[0] + 8, TILE[1] + 8 + 18
    column = [grid.getpixel((7, y)) for y in range(grid.height)]
    tops = [y for y in range(1, grid.height - 20)  # the photos' blue frames (the legend swatches are smaller)
            if column[y - 1] != QUERY_BLUE and all(c == QUERY_BLUE for c in column[y : y + 20])]
    assert len(tops) == 3 and tops[0] > 6  # a legend above the first row

    def frame(row, col):
        return grid.getpixel((6 + col * (cell_w + 6) + 1, tops[row] + 1))

    assert [frame(0, c) for c in range(1, 5)] == [PREDICTED_GREY, GREEN, RED, ORANGE]
    assert [frame(1, c) for c in (1, 2)] == [PREDICTED_GREY, RED] and frame(2, 2) == GREEN
    legend = {grid.getpixel((x, y)) for x in range(grid.width) for y in range(tops[0] - 6)}
    assert {QUERY_BLUE, PREDICTED_GREY, GREEN, ORANGE, RED} <= legend
    font = ImageFont.load_default()
    for row, label in enumerate(labels):  # the caption under the photo is its label, drawn in order
        caption_top = tops[row] + TILE[1] + 8
        expected = Image.new("RGB", (cell_w, 18), (255, 255, 255))
        draw = ImageDraw.Draw(expected)
        draw.text((2, 3), _fit(draw, label, font, cell_w - 4), fill=(0, 0, 0), font=font)
        assert grid.crop((6, caption_top, 6 + cell_w, caption_top + 18)).tobytes() == expected.tobytes()
    with pytest.raises(ConfigError, match="one entry per photo"):
        save_localization_grid(out, paths[:3], labels[:2], matches, distances, [0.9, 0.1, 0.5])
