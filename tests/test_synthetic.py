"""The synthetic world: layout, names, geometry of splits, determinism, image statistics, CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import utm
from PIL import Image

from progeo.cli import main
from progeo.data.synthetic import Conditions, Preset, city_map, generate_world, render_view
from progeo.errors import ConfigError

FOLDERS = ("train", "val/database", "val/queries", "test/database", "test/queries",
           "test/queries_night", "test/queries_occlusion")
# One city, 32 px, ~200 images: fast enough to generate several times.
MICRO = Preset("micro", ("Lisbon",), 32, train_cells=1, val_db_length=10.0, test_db_length=10.0,
               val_queries=2, test_queries=2)


def _paths(root: Path, folder: str) -> list[str]:
    return (root / f"{folder}_images_paths.txt").read_text(encoding="utf-8").splitlines()


def _fields(path: str) -> list[str]:
    return Path(path).name.split("@")


def _utm(root: Path, folder: str) -> np.ndarray:
    return np.array([[float(f[1]), float(f[2])] for f in map(_fields, _paths(root, folder))])


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ layout and names
def test_layout_manifest_and_paths_files(tiny_world):
    manifest = json.loads((tiny_world / "world.json").read_text())
    assert manifest["generator"] == "progeo.synthetic"
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0 and manifest["image_size"] == 64
    assert 60 <= manifest["fov_deg"] <= 90
    assert {c["name"] for c in manifest["cities"]} == {"Lisbon", "Porto", "Oslo"}
    assert {c["country"] for c in manifest["cities"]} == {"Portugal", "Norway"}
    zones = {c["name"]: c["utm_zone"] for c in manifest["cities"]}
    assert zones == {"Lisbon": "29S", "Porto": "29T", "Oslo": "32V"}
    total = 0
    for folder in FOLDERS:
        listed = _paths(tiny_world, folder)
        on_disk = sorted(str(p.relative_to(tiny_world / folder)) for p in (tiny_world / folder).rglob("*.jpg"))
        assert sorted(listed) == on_disk and len(listed) == manifest["counts"][folder] > 0
        total += len(listed)
    assert manifest["total_images"] == total and 1000 <= total <= 2000
    with Image.open(tiny_world / "train" / _paths(tiny_world, "train")[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 64) and im.mode == "RGB"


def test_file_names_carry_consistent_utm_and_latlon(tiny_world):
    for folder in FOLDERS:
        for path in _paths(tiny_world, folder)[::7]:
            f = _fields(path)
            assert len(f) == 16 and f[0] == "" and f[-1] == ".jpg"
            east, north, zone, letter, lat, lon = float(f[1]), float(f[2]), int(f[3]), f[4], float(f[5]), float(f[6])
            assert len(f[1].split(".")[1]) == 2 and len(f[5].split(".")[1]) >= 5
            e2, n2, z2, l2 = utm.from_latlon(lat, lon)
            assert (z2, l2) == (zone, letter)
            assert abs(e2 - east) < 0.2 and abs(n2 - north) < 0.2
            assert 0 <= float(f[9]) < 360 and len(f[13]) == 6 and f[13].startswith("20") and f[14]


def test_train_classes_have_at_least_ten_images(tiny_world):
    classes = Counter()
    for f in map(_fields, _paths(tiny_world, "train")):
        east, north, heading = float(f[1]), float(f[2]), float(f[9])
        classes[(int(east // 10), int(north // 10), int(heading // 30))] += 1
    assert len(classes) == 3 * 3 * 12  # 3 cities x 3 cells x 12 heading bins
    assert min(classes.values()) >= 10


def test_every_query_has_a_database_image_within_25_m(tiny_world):
    for split, queries in (("val", ("queries",)), ("test", ("queries", "queries_night", "queries_occlusion"))):
        db = _utm(tiny_world, f"{split}/database")
        for q in queries:
            qs = _utm(tiny_world, f"{split}/{q}")
            nearest = np.sqrt(((qs[:, None] - db[None]) ** 2).sum(-1)).min(1)
            assert nearest.max() <= 25.0
            assert nearest.min() > 0.0  # queries are not taken at database positions


def test_val_and_test_come_from_districts_unseen_in_training(tiny_world):
    train = _utm(tiny_world, "train")
    for folder in ("val/database", "test/database", "test/queries"):
        other = _utm(tiny_world, folder)
        dist = np.sqrt(((other[:, None] - train[None]) ** 2).sum(-1)).min(1)
        assert dist.min() > 25.0
    val, test = _utm(tiny_world, "val/database"), _utm(tiny_world, "test/database")
    assert np.sqrt(((val[:, None] - test[None]) ** 2).sum(-1)).min() > 25.0


def test_captions_and_labels_cover_every_image(tiny_world):
    every = {f"{folder}/{p}" for folder in FOLDERS for p in _paths(tiny_world, folder)}
    captions = dict(line.split("\t") for line in (tiny_world / "captions.tsv").read_text().splitlines())
    assert set(captions) == every
    with open(tiny_world / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "lat", "lon", "city", "country"]
    assert {r["path"] for r in rows} == every and len(rows) == len(every)
    for r in rows[::11]:
        f = _fields(r["path"])
        assert abs(float(r["lat"]) - float(f[5])) < 1e-6 and abs(float(r["lon"]) - float(f[6])) < 1e-6
        assert f"{r['city']}, {r['country']}" in captions[r["path"]]
    night = [captions[p] for p in every if p.startswith("test/queries_night/")]
    assert all(any(w in c for w in ("night", "after dark")) for c in night)
    assert len(set(captions.values())) > 0.5 * len(captions)  # captions vary


def test_night_images_are_darker_and_occluded_queries_show_occluders(tiny_world):
    def mean(folder):
        return np.mean([np.asarray(Image.open(tiny_world / folder / p)).mean() for p in _paths(tiny_world, folder)])

    assert mean("test/queries_night") < 0.5 * mean("test/queries")
    captions = (tiny_world / "captions.tsv").read_text().splitlines()
    occ = [c for c in captions if c.startswith("test/queries_occlusion/")]
    with_people_or_cars = [c for c in occ if any(w in c for w in ("car", "pedestrian"))]
    assert len(with_people_or_cars) >= 0.8 * len(occ)


# ------------------------------------------------------------------ rendering
def _street_poses(city: str, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    segs = [s for s in city_map(city).segments if s.routable and s.length > 40]
    out = []
    for i in range(count):
        seg = segs[int(rng.integers(len(segs)))]
        x, y = seg.point(rng.uniform(seg.start + 10, seg.end - 10))
        heading = (90.0 if seg.axis == "x" else 0.0) + rng.choice([0.0, 90.0, 180.0, 270.0]) + rng.uniform(-20, 20)
        out.append((float(x), float(y), float(heading), seg))
    return out


def _corr(a: np.ndarray, b: np.ndarray, cells: int = 16) -> float:
    """Correlation of grey images average-pooled to cells x cells (a small, shift-tolerant feature)."""
    def feat(x):
        g = x.astype(np.float64).mean(-1)
        n = g.shape[0] // cells
        return g.reshape(cells, n, cells, n).mean((1, 3)).ravel()
    return float(np.corrcoef(feat(a), feat(b))[0, 1])


def test_nearby_views_look_alike_and_far_views_differ():
    near, far = [], []
    for city in ("Lisbon", "Oslo", "Kyoto"):
        for x, y, h, seg in _street_poses(city, 4, seed=1):
            ref = render_view(city, x, y, h, image_size=64)
            dx, dy = (1.0, 0.0) if seg.axis == "x" else (0.0, 1.0)
            near.append(_corr(ref, render_view(city, x + dx, y + dy, h + 5, image_size=64)))
            fx, fy = (x + 200.0 * np.sign(-x or 1), y) if seg.axis == "x" else (x, y + 200.0 * np.sign(-y or 1))
            far.append(_corr(ref, render_view(city, fx, fy, h, image_size=64)))
    # 1 m / 5 degrees apart: alike; 200 m apart: only the shared street layout (sky, road) correlates.
    assert np.mean(near) > 0.6
    assert np.mean(near) > np.mean(far) + 0.2


def test_conditions_change_the_image_as_expected():
    (x, y, h, _), = _street_poses("Porto", 1, seed=3)
    day = render_view("Porto", x, y, h, image_size=64)
    night = render_view("Porto", x, y, h, image_size=64, conditions=Conditions(time="night"))
    fog = render_view("Porto", x, y, h, image_size=64, conditions=Conditions(weather="fog"))
    assert day.shape == (64, 64, 3) and day.dtype == np.uint8
    assert night.mean() < 0.5 * day.mean()
    assert fog.astype(float).std() < day.astype(float).std()  # fog washes out contrast
    # Same pose: a day query (other year and season, a few occluders) differs from the database
    # view less than an occlusion query does.
    diffs_day, diffs_occ = [], []
    for i, (x, y, h, _) in enumerate(_street_poses("Lisbon", 6, seed=4)):
        db = render_view("Lisbon", x, y, h, image_size=64, conditions=Conditions(year=2017))
        day = render_view("Lisbon", x, y, h, image_size=64, noise_seed=i,
                          conditions=Conditions(year=2021, month=4, season="spring", occluders="light"))
        occluded = render_view("Lisbon", x, y, h, image_size=64, noise_seed=i,
                               conditions=Conditions(year=2022, month=4, season="spring", occluders="heavy"))
        diffs_day.append(np.abs(db.astype(float) - day).mean())
        diffs_occ.append(np.abs(db.astype(float) - occluded).mean())
    assert np.mean(diffs_occ) > 1.5 * np.mean(diffs_day) > 0.0


def test_render_is_deterministic_and_depends_on_the_world_seed():
    a = render_view("Oslo", 5.0, 5.0, 30.0, image_size=32, seed=0)
    assert np.array_equal(a, render_view("Oslo", 5.0, 5.0, 30.0, image_size=32, seed=0))
    assert not np.array_equal(a, render_view("Oslo", 5.0, 5.0, 30.0, image_size=32, seed=1))


# ------------------------------------------------------------------ writing
def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    generate_world(tmp_path / "a", MICRO, seed=3, workers=1)
    generate_world(tmp_path / "b", MICRO, seed=3, workers=2)
    generate_world(tmp_path / "c", MICRO, seed=4, workers=1)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) > 150 and a == b
    assert a["world.json"] != c["world.json"] and set(a) != set(c)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_refuses_to_touch_a_foreign_folder_and_replaces_only_with_overwrite(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a synthetic world"):
            generate_world(foreign, MICRO, workers=1, overwrite=overwrite)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    world = tmp_path / "world"
    generate_world(world, MICRO, seed=0, workers=1)
    with pytest.raises(ConfigError, match="--overwrite"):
        generate_world(world, MICRO, seed=1, workers=1)
    assert json.loads((world / "world.json").read_text())["seed"] == 0
    generate_world(world, MICRO, seed=1, workers=1, overwrite=True)
    assert json.loads((world / "world.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "world"]


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "huge"}, "unknown synthetic world preset"),
    ({"image_size": 4}, "image_size"),
    ({"workers": 0}, "workers"),
    ({"seed": -1}, "seed"),
])
def test_bad_options_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        generate_world(tmp_path / "w", **{"preset": MICRO, **kwargs})
    assert not (tmp_path / "w").exists()


def test_bad_city_and_conditions_are_rejected():
    with pytest.raises(ConfigError, match="unknown synthetic city"):
        render_view("Atlantis")
    with pytest.raises(ConfigError, match="time"):
        Conditions(time="noon")


# ------------------------------------------------------------------ command line
def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "--overwrite" in out and "--seed" in out


def test_cli_run_and_refusal(tmp_path, capsys):
    out = tmp_path / "cli_world"
    assert main(["synth", "--out", str(out), "--preset", "tiny", "--image-size", "32", "--seed", "5",
                 "--workers", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and "Lisbon (Portugal, UTM 29S)" in printed
    assert json.loads((out / "world.json").read_text())["image_size"] == 32
    assert main(["synth", "--out", str(out), "--preset", "tiny", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
