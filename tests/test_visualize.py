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
