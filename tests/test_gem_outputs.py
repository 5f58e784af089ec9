"""GEM outputs: the truth and the km error in predictions files, an l2 grid widened past its edge, the
synthetic world's split label files, and the README's GEM recipe for the synthetic world run as written."""

from __future__ import annotations

import csv
import logging
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from progeo.cli import main
from progeo.geo import Place, PlaceList
from progeo.geo.labelled_images import LabelledImages
from progeo.geo.probe import select_l2
from progeo.geo.report import ClassTable, Predictions, evaluate_labelled

README = Path(__file__).resolve().parents[1] / "README.md"
LISBON, PORTO, OSLO = (38.7223, -9.1393), (41.1579, -8.6291), (59.9139, 10.7522)


def _great_circle_km(a, b) -> float:  # spherical law of cosines, independent of the haversine in the code
    (la1, lo1), (la2, lo2) = [(math.radians(x), math.radians(y)) for x, y in (a, b)]
    c = math.sin(la1) * math.sin(la2) + math.cos(la1) * math.cos(la2) * math.cos(lo2 - lo1)
    return 6371.0088 * math.acos(min(1.0, max(-1.0, c)))


def test_predictions_csv_has_the_truth_and_the_great_circle_error(tmp_path):
    places = PlaceList([Place("Lisbon", "Portugal", *LISBON), Place("Porto", "Portugal", *PORTO),
                        Place("Oslo", "Norway", *OSLO)], source="test")
    classes = ClassTable.from_places(places, "city")
    truth = [(38.70, -9.14), (41.10, -8.60), (59.95, 10.70)]  # three labelled images; the second is undecodable
    labels = LabelledImages([f"img{i}.jpg" for i in range(3)], np.array([t[0] for t in truth]),
                            np.array([t[1] for t in truth]), ["Lisbon", "Porto", "Oslo"],
                            ["Portugal", "Portugal", "Norway"], "placepulse", Path("labels.csv"))
    kept = np.array([0, 2])
    top = np.array([[1, 0], [0, 2]])  # img0 -> Porto (wrong), img2 -> Lisbon (wrong)
    pred = Predictions(classes, ["img0.jpg", "img2.jpg"], top, np.array([[0.6, 0.3], [0.5, 0.4]], np.float32),
                       classes.lat[top[:, 0]], classes.lon[top[:, 0]])
    metrics = evaluate_labelled(pred, labels, kept, np.array([0, 1, 2]), ["Portugal", "Portugal", "Norway"])
    with open(pred.write(tmp_path / "predictions.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == ["image", "lat", "lon", "true_lat", "true_lon", "true_city", "true_country", "error_km"]
    assert [(r["true_city"], r["true_country"]) for r in rows] == [("Lisbon", "Portugal"), ("Oslo", "Norway")]
    assert [(float(r["true_lat"]), float(r["true_lon"])) for r in rows] == [truth[0], truth[2]]
    expected = [_great_circle_km(truth[0], PORTO), _great_circle_km(truth[2], LISBON)]
    assert [float(r["error_km"]) for r in rows] == pytest.approx(expected, abs=1e-3)
    assert 270 < expected[0] < 285 and 2700 < expected[1] < 2800
    assert metrics["median_km"] == pytest.approx(np.median(expected), abs=1e-3)
    # without labels the columns are absent
    bare = Predictions(classes, ["x.jpg"], top[:1], np.array([[0.6, 0.3]], np.float32), classes.lat[[1]], classes.lon[[1]])
    assert "error_km" not in bare.rows()[0] and "true_city" not in bare.rows()[0]


def _blobs(counts, seed: int):
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8, dtype=np.float32) * 2
    x = np.concatenate([c + 0.9 * rng.normal(size=(n, 8)) for c, n in zip(centres, counts)]).astype(np.float32)
    return torch.from_numpy(x), torch.arange(3).repeat_interleave(torch.tensor(counts))


def test_a_best_l2_at_the_grid_edge_warns_and_widens_the_grid(caplog):
    x, y = _blobs((90, 15, 15), 0)  # imbalanced: a strong l2 leaves the bias, i.e. the majority class
    xv, yv = _blobs((30, 30, 30), 1)
    with caplog.at_level(logging.INFO, logger="progeo.geo.probe"):
        best, accs, _ = select_l2(x, y, xv, yv, 3, (0.1, 1.0), max_iter=50)  # too strong: 0.1 wins, at the edge
    assert {0.1, 1.0} < set(accs) and best < 0.1 and accs[best] > accs[0.1] + 0.05
    assert accs[best] == max(accs.values()) and min(accs) < best  # widened one value past the new best
    assert "the best l2 0.1 was the weakest value of the grid; widened the grid to" in caplog.text
    assert f"chose l2={best:g}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="progeo.geo.probe"):
        best, accs, _ = select_l2(x, y, xv, yv, 3, (0.1, 1.0), max_iter=50, widen=0)
    assert set(accs) == {0.1, 1.0} and best == 0.1
    assert "the best l2 0.1 is at the edge of the grid; pass --grid with values beyond it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="progeo.geo.probe"):
        best, accs, _ = select_l2(x, y, xv, yv, 3, (1e-4, 1e-3, 1e-2, 1e-1), max_iter=50)
    assert best == 1e-3 and "widened" not in caplog.text and "edge" not in caplog.text  # inside: quiet


def test_synth_writes_one_labels_file_per_split(tiny_world):
    header = "path,lat,lon,city,country"
    every = (tiny_world / "labels.csv").read_text().splitlines()
    parts = {s: (tiny_world / f"labels_{s}.csv").read_text().splitlines() for s in ("train", "val", "test")}
    assert all(lines[0] == header for lines in parts.values())
    for split, lines in parts.items():
        assert lines[1:] and all(line.startswith(f"{split}/") for line in lines[1:])
    assert sorted(every[1:]) == sorted(line for lines in parts.values() for line in lines[1:])


def _readme_recipe() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## GEM: city and country of a photo"):]
    block = re.search(r"On the synthetic world.*?```\n(.*?)```", section, re.S)
    assert block, "the README's GEM section lost its synthetic-world recipe"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_gem_recipe_runs_on_a_tiny_synthetic_world(tmp_path, monkeypatch, capsys):
    lines = _readme_recipe()
    assert lines[0].startswith("progeo synth --preset tiny") and any("probe eval" in line for line in lines)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    try:
        for line in lines:
            args = shlex.split(line)
            assert args[0] == "progeo"
            assert main(args[1:]) == 0, line
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "zero-shot city" in out and "linear probe city" in out
    for run in ("zeroshot-city", "zeroshot-country", "probe-city-test"):
        with open(tmp_path / "gem" / run / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 282 and all(r["true_city"] in ("Lisbon", "Porto", "Oslo") for r in rows)
        assert all(float(r["error_km"]) >= 0 for r in rows)
        right = [r for r in rows if (r["top1"] == r["true_city"] if "city" in run else r["top1"] == r["true_country"])]
        assert len(right) > 0.5 * len(rows)  # better than chance (1/3 cities, 1/2 countries)
