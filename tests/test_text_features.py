"""The on-disk cache of zero-shot class text features: hits, misses on any change, rebuilt when damaged."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from progeo.geo import Place, PlaceList
from progeo.geo.templates import CITY_TEMPLATES
from progeo.geo.text_features import cached_class_text_features, encode_class_texts
from progeo.geo.zeroshot import build_zeroshot_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLACES = PlaceList([Place("Lisbon", "Portugal", 38.72, -9.14), Place("Porto", "Portugal", 41.15, -8.61),
                    Place("Oslo", "Norway", 59.91, 10.75), Place("Bergen", "Norway", 60.39, 5.32)], source="test")


@pytest.fixture(scope="module")
def clip():
    from progeo.models.backbones import load_clip

    torch.manual_seed(0)
    return load_clip("tiny-rn")


def _build(clip, folder, places=PLACES, templates=None, level="city", **kw):
    return build_zeroshot_classifier(clip, places, level, templates, cache_dir=folder, **kw)


def _text_files(cache):
    return sorted(p.name for p in cache.glob("text-*.npy"))


def test_second_run_hits_the_cache_with_identical_scores(clip, tmp_path):
    cache = tmp_path / "cache"
    first = _build(clip, cache)
    assert not first.text_cache_hit and first.text_cache_file.parent == cache
    assert first.text_cache_file.name.startswith("text-tiny-rn-") and len(_text_files(cache)) == 1
    meta = json.loads(first.text_cache_file.with_suffix(".json").read_text())
    assert meta["shape"] == [4, clip.embed_dim] and meta["dtype"] == "float32" and len(meta["sha1"]) == 40
    second = _build(clip, cache)
    assert second.text_cache_hit and second.text_cache_file == first.text_cache_file
    np.testing.assert_array_equal(second.text_features, first.text_features)
    images = np.random.default_rng(0).normal(size=(6, clip.embed_dim)).astype(np.float32)
    a, b = first.predict(images, [f"{i}.jpg" for i in range(6)]), second.predict(images, [f"{i}.jpg" for i in range(6)])
    np.testing.assert_array_equal(a.top_index, b.top_index)
    np.testing.assert_array_equal(a.top_score, b.top_score)
    # the cached features are exactly the uncached computation
    fresh = encode_class_texts(clip, [[t.format(city=p.name, country=p.country) for t in CITY_TEMPLATES] for p in PLACES])
    np.testing.assert_allclose(second.text_features, fresh, rtol=1e-6, atol=1e-7)
    # country level in aggregate mode encodes the same city texts: the same file
    assert _build(clip, cache, level="country").text_cache_hit


def test_changed_template_place_or_weights_miss(clip, tmp_path):
    import copy

    cache = tmp_path / "cache"
    base = _build(clip, cache)
    other_template = _build(clip, cache, templates=(*CITY_TEMPLATES[:-1], "a photo of {city} in {country}."))
    assert not other_template.text_cache_hit
    renamed = PlaceList([*PLACES.places[:3], Place("Bergen", "Sweden", 60.39, 5.32)], source="test")
    assert not _build(clip, cache, places=renamed).text_cache_hit  # same city, other country: other texts
    fewer = PlaceList(PLACES.places[:3], source="test")
    assert not _build(clip, cache, places=fewer).text_cache_hit
    prompts = _build(clip, cache, level="country", country_mode="prompts")
    assert not prompts.text_cache_hit and prompts.text_features.shape[0] == 2
    changed = copy.deepcopy(clip)
    with torch.no_grad():
        changed.model.ln_final.bias.add_(torch.linspace(-0.2, 0.2, changed.model.ln_final.bias.numel()))
    moved = _build(changed, cache)
    assert not moved.text_cache_hit and not np.array_equal(moved.text_features, base.text_features)
    image_only = copy.deepcopy(clip)  # the image tower does not enter the text features
    with torch.no_grad():
        next(image_only.model.visual.parameters()).add_(0.05)
    assert _build(image_only, cache).text_cache_hit
    assert len(_text_files(cache)) == 6


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "no-description"])
def test_damaged_cache_file_is_rebuilt_with_a_warning(clip, tmp_path, caplog, damage):
    cache = tmp_path / "cache"
    first = _build(clip, cache)
    file = first.text_cache_file
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) - 40])
    elif damage == "flip":  # same size, one value changed: caught by the checksum
        file.write_bytes(data[:-4] + bytes(b ^ 0xFF for b in data[-4:]))
    elif damage == "garbage":
        file.write_bytes(b"not a numpy file at all")
    else:
        file.with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING, logger="progeo.cache"):
        rebuilt = _build(clip, cache)
    assert not rebuilt.text_cache_hit
    if damage != "no-description":  # a missing description is an interrupted write, not damage
        assert any(str(file) in r.getMessage() and "recomputing" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(rebuilt.text_features, first.text_features, rtol=1e-6, atol=1e-7)
    again = _build(clip, cache)
    assert again.text_cache_hit
    np.testing.assert_array_equal(again.text_features, rebuilt.text_features)


def test_cache_off_reads_and_writes_nothing(clip, tmp_path):
    cache = tmp_path / "cache"
    _build(clip, cache)
    off = _build(clip, cache, cache=False)
    assert not off.text_cache_hit and off.text_cache_file is None
    other = cached_class_text_features(clip, [["a photo of Rome, Italy."]], cache_dir=tmp_path / "none", cache=False)
    assert other.file is None and not (tmp_path / "none").exists()


def test_default_folder_is_the_feature_cache(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("PROGEO_CACHE_DIR", str(tmp_path / "home-cache"))
    got = cached_class_text_features(clip, [["a photo of Rome, Italy."], ["a photo of Oslo, Norway."]])
    assert got.file.parent == tmp_path / "home-cache" / "features" and got.features.shape == (2, clip.embed_dim)
