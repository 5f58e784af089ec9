"""Index folders and the Localizer on the tiny synthetic world.

The descriptor model here is a deterministic pixel descriptor written for this test only: it
satisfies the describe contract (uint8 batches in, float32 B x D out, ``image_size``,
``descriptor_dim``), so the plumbing (decode, index, search, coordinates, outputs) is checked
against known positions without a trained network.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

import progeo
from progeo.data.test_sets import TestSet
from progeo.data.vg_names import format_vg_name, parse_vg_names
from progeo.errors import ConfigError, DatasetError, ImageDecodeError
from progeo.eval.localize_core import predictions_to_geojson, write_geojson
from progeo.eval.index import Index, coordinates_from_names
from progeo.eval.localizer import Localizer, save_match_grid
from progeo.eval.search import IndexConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The CI machine is shared: one torch thread avoids spin-waiting slowdowns (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PixelDescriptor:
    """Colour thumbnails (4x4 average pooling of 64 px images), centred and L2-normalized."""

    image_size = (64, 64)
    descriptor_dim = 3 * 16 * 16

    def describe(self, images, device=None, **kwargs):
        x = torch.as_tensor(images).float()
        x = F.avg_pool2d(x, 4).flatten(1)
        return F.normalize(x - x.mean(1, keepdim=True), dim=1).numpy()


@pytest.fixture(scope="module")
def index_dir(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "idx"
    index = Index.build(PixelDescriptor(), tiny_world / "test" / "database", out, model_ref="pixels", progress=False)
    assert len(index) == 192 and not index.info["skipped_paths"] and index.path == out
    return out


@pytest.fixture(scope="module")
def photos(tiny_world, tmp_path_factory):
    """12 database images re-encoded as new photos (96 px, brighter, JPEG q80) under plain names,
    with their true UTM (east, north)."""
    folder = tmp_path_factory.mktemp("photos")
    database = TestSet(tiny_world / "test").database_paths
    chosen = [database[i] for i in range(0, 192, 16)]
    for i, path in enumerate(chosen):
        with Image.open(path) as img:
            img = ImageEnhance.Brightness(img.convert("RGB").resize((96, 96), Image.Resampling.BICUBIC)).enhance(1.08)
            img.save(folder / f"photo_{i:02d}.jpg", quality=80)
    return folder, parse_vg_names(chosen).utms


def _errors_m(predictions, true_utms) -> np.ndarray:
    return np.array([math.hypot(p.utm_east - e, p.utm_north - n) for p, (e, n) in zip(predictions, true_utms)])


def test_index_folder_contents(index_dir, tiny_world):
    info = json.loads((index_dir / "index.json").read_text())
    assert info["format"] == "progeo-index" and info["count"] == 192 and info["image_size"] == [64, 64]
    assert info["model"] == {"ref": "pixels", "saved_copy": False, "descriptor_dim": 768, "config": None}
    assert info["index"]["kind"] == "flat" and info["database"] == str((tiny_world / "test" / "database").resolve())
    for name in ("descriptors/descriptors.npy", "descriptors/paths.txt", "coordinates.npz", "index.faiss", "index.faiss.json"):
        assert (index_dir / name).is_file(), name
    assert not (index_dir / "model").exists()


def test_new_photos_are_placed_within_25_m(index_dir, photos):
    folder, true_utms = photos
    localizer = Localizer.from_index(index_dir, model=PixelDescriptor())
    predictions = localizer.localize(folder, top_k=5)  # a folder of photos
    assert [p.query for p in predictions] == [str(folder / f"photo_{i:02d}.jpg") for i in range(12)]
    assert np.mean(_errors_m(predictions, true_utms) <= 25.0) >= 0.75
    for p in predictions:
        assert len(p.matches) == 5 and p.matches[0].distance_to_prediction_m == 0 and 0 <= p.confidence <= 1
        assert [m.rank for m in p.matches] == [1, 2, 3, 4, 5] and p.matches[0].path.endswith(".jpg")
        lat, lon = p.matches[0].lat, p.matches[0].lon
        assert (p.lat, p.lon) == (lat, lon) and -90 <= lat <= 90 and -180 <= lon <= 180


def test_real_queries_localize_better_than_chance(index_dir, tiny_world):
    queries = TestSet(tiny_world / "test").queries_paths
    predictions = Localizer.from_index(index_dir, model=PixelDescriptor()).localize(list(queries), top_k=1)
    assert np.mean(_errors_m(predictions, parse_vg_names(queries).utms) <= 25.0) >= 0.3  # chance: ~5 %


def test_decoded_inputs_match_files(index_dir, photos):
    folder, _ = photos
    files = sorted(folder.iterdir())[:4]
    localizer = Localizer.from_index(index_dir, model=PixelDescriptor())
    from_files = localizer.localize([str(f) for f in files], top_k=3)
    pil = [Image.open(f) for f in files]
    from_pil = localizer.localize(pil, top_k=3)
    batch = torch.stack([torch.from_numpy(np.array(i.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))).permute(2, 0, 1)
                         for i in pil])
    from_tensor = localizer.localize(batch, top_k=3)
    best = [p.matches[0].database_index for p in from_files]
    assert [p.matches[0].database_index for p in from_pil] == best == [p.matches[0].database_index for p in from_tensor]
    assert from_pil[0].query == "image 0"
    with pytest.raises(ConfigError, match="uint8"):
        localizer.localize(batch.float(), top_k=3)


def test_unreadable_photos(index_dir, photos, tmp_path):
    folder, _ = photos
    bad = tmp_path / "bad.jpg"
    bad.write_bytes((folder / "photo_00.jpg").read_bytes()[:300])
    good = str(folder / "photo_01.jpg")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        Localizer.from_index(index_dir, model=PixelDescriptor()).localize([str(bad), good])
    localizer = Localizer.from_index(index_dir, model=PixelDescriptor(), on_bad_image="skip")
    predictions = localizer.localize([str(bad), good])
    assert [p.query for p in predictions] == [good] and localizer.skipped_paths == [str(bad)]
    with pytest.raises(DatasetError, match="does not exist"):
        localizer.localize([str(tmp_path / "missing.jpg")])


def test_geojson_is_valid(index_dir, photos, tmp_path):
    folder, _ = photos
    predictions = Localizer.from_index(index_dir, model=PixelDescriptor()).localize(folder, top_k=3)
    write_geojson(predictions, tmp_path / "p.geojson")

    def no_nan(token):
        raise AssertionError(f"{token} is not valid JSON (RFC 8259)")

    doc = json.loads((tmp_path / "p.geojson").read_text(), parse_constant=no_nan)
    assert doc == json.loads(json.dumps(predictions_to_geojson(predictions)))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 12 * (1 + 3)
    for feature in doc["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
        lon, lat = feature["geometry"]["coordinates"]  # RFC 7946: longitude first
        assert -180 <= lon <= 180 and -90 <= lat <= 90 and isinstance(feature["properties"], dict)
        assert feature["properties"]["kind"] in ("prediction", "match")
    first = doc["features"][0]
    assert first["geometry"]["coordinates"] == [predictions[0].lon, predictions[0].lat]
    assert save_match_grid(predictions, tmp_path / "grid.png", top_k=3) == 12


def test_index_kinds_and_a_saved_model_copy(tiny_world, tmp_path):
    torch.manual_seed(0)
    model = progeo.build_model("tiny-vit")
    Index.build(model, tiny_world / "test" / "database", tmp_path / "idx", index=IndexConfig(kind="hnsw"),
                model_ref="tiny-vit", progress=False)
    localizer = progeo.Localizer.from_index(tmp_path / "idx")  # the model comes from the folder
    assert len(localizer.index) == 192 and localizer.model.descriptor_dim == 64
    direct = model.describe(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert np.allclose(localizer.model.describe(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), direct, atol=1e-5)
    assert len(localizer.localize(TestSet(tiny_world / "test").queries_paths[0], top_k=2)[0].matches) == 2


def test_bad_index_folders(index_dir, tmp_path):
    with pytest.raises(ConfigError, match="model=..."):
        Localizer.from_index(index_dir)  # built with a custom model that was not saved
    with pytest.raises(DatasetError, match="progeo index build"):
        Localizer.from_index(tmp_path)
    with pytest.raises(ConfigError, match="768-d"):
        Localizer.from_index(index_dir, model=type("Small", (PixelDescriptor,), {"descriptor_dim": 8})())


def test_coordinates_from_names():
    with_zone = format_vg_name(551000.0, 4180000.0, 10, "S", 37.766, -122.425)
    no_zone = format_vg_name(551000.0, 4180000.0, None, "", 37.766, -122.425)
    coords = coordinates_from_names([f"db/{with_zone}", f"db/{no_zone}"])
    assert coords.zone_number.tolist() == [10, 10] and coords.zone_letter.tolist() == ["S", "S"]
    assert coords.lat.tolist() == [37.766, 37.766]
    only_utm = format_vg_name(551000.0, 4180000.0)
    with pytest.raises(DatasetError, match="neither the UTM zone"):
        coordinates_from_names([f"db/{only_utm}"])


def test_photo_order_and_grid_labels(index_dir, photos, tmp_path, monkeypatch):
    """A folder's photos come in natural order (photo2 before photo10), files in the order given,
    and the grid labels its rows with the file names in that order."""
    import progeo.eval.visualize as visualize

    folder, _ = photos
    renamed = tmp_path / "mine"
    renamed.mkdir()
    for i in (1, 2, 10):
        (renamed / f"photo{i}.jpg").write_bytes((folder / f"photo_{i:02d}.jpg").read_bytes())
    localizer = Localizer.from_index(index_dir, model=PixelDescriptor())
    predictions = localizer.localize(renamed, top_k=3)
    assert [p.query for p in predictions] == [str(renamed / f"photo{i}.jpg") for i in (1, 2, 10)]
    given = [str(renamed / "photo10.jpg"), str(renamed / "photo1.jpg")]
    assert [p.query for p in localizer.localize(given, top_k=3)] == given
    drawn = {}
    real = visualize.save_localization_grid

    def spy(path, photo_paths, labels, *args, **kwargs):
        drawn.update(photos=list(photo_paths), labels=list(labels))
        return real(path, photo_paths, labels, *args, **kwargs)

    monkeypatch.setattr(visualize, "save_localization_grid", spy)
    assert save_match_grid(predictions, tmp_path / "grid.png", top_k=3) == 3
    assert drawn["labels"] == ["photo1.jpg", "photo2.jpg", "photo10.jpg"]
    assert drawn["photos"] == [p.query for p in predictions]


def test_confidence_and_agreement_do_not_change_with_top_k(index_dir, photos):
    folder, _ = photos
    localizer = Localizer.from_index(index_dir, model=PixelDescriptor())
    runs = {k: localizer.localize(folder, top_k=k) for k in (1, 5, 20)}
    for k, predictions in runs.items():
        assert all(len(p.matches) == k for p in predictions)
        for p, ref in zip(predictions, runs[20]):
            assert (p.confidence, p.agreeing, p.agreeing_city, p.runner_ups) == (
                ref.confidence, ref.agreeing, ref.agreeing_city, ref.runner_ups)
            assert p.runner_ups == 9 and p.matches == ref.matches[:k]
