"""CosPlace classes and groups against a plain-dict reference; the on-disk cache; the train view."""

import logging
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import progeo.data.vg_names as vg_names
from progeo.data.groups import GroupsConfig, build_groups, cache_path, default_cache_dir, load_or_build_groups
from progeo.data.image_lists import ImageList, read_image_list
from progeo.data.train_sets import TrainSet
from progeo.data.vg_names import format_vg_name, parse_vg_names
from progeo.errors import ConfigError, DatasetError


def _random_names(n, seed=0, e0=550000.0, n0=4180000.0, span=90.0):
    rng = np.random.default_rng(seed)
    east = e0 - 25 + rng.uniform(0, span, n)
    north = n0 - 25 + rng.uniform(0, span, n)
    heading = rng.uniform(0, 360, n).round(1)
    heading[:5] = [0, 29.9, 30, 359.9, 180]
    return [f"d{i % 3}/" + format_vg_name(e, no, 10, "S", heading=h) for i, (e, no, h) in
            enumerate(zip(east, north, heading))]


def _reference(names, c: GroupsConfig):
    """The definition, written the obvious way with Python dicts."""
    classes = defaultdict(list)
    for i, path in enumerate(names):
        f = path.split("/")[-1].split("@")
        e, n, h = float(f[1]), float(f[2]), float(f[9])
        cid = (math.floor(e / c.M) * c.M, math.floor(n / c.M) * c.M, math.floor(h / c.alpha) * c.alpha)
        classes[cid].append(i)
    classes = {k: v for k, v in classes.items() if len(v) >= c.min_images_per_class}
    groups = defaultdict(list)
    for k in classes:
        groups[((k[0] // c.M) % c.N, (k[1] // c.M) % c.N, (k[2] // c.alpha) % c.L)].append(k)
    return classes, groups


def _build(names, config):
    p = parse_vg_names(names, fields=("utm_east", "utm_north", "heading"), required=("utm_east", "utm_north", "heading"))
    return build_groups(p["utm_east"], p["utm_north"], p["heading"], config)


@pytest.mark.parametrize("config, kwargs", [
    (GroupsConfig(min_images_per_class=3), {}),
    (GroupsConfig(M=5, alpha=45, N=3, L=3, min_images_per_class=2), {}),
    (GroupsConfig(min_images_per_class=1), {"e0": -40.0, "n0": -15.0}),  # local, negative coordinates
])
def test_classes_and_groups_match_the_reference(config, kwargs):
    names = _random_names(3000, **kwargs)
    g = _build(names, config)
    classes, groups = _reference(names, config)
    assert g.images_num == len(names) and g.classes_num == len(classes) and g.groups_num == len(groups)
    assert [tuple(x) for x in g.group_ids.tolist()] == sorted(groups)  # groups sorted by id
    assert g.image_indices.size == sum(len(v) for v in classes.values())
    for gi, gid in enumerate(sorted(groups)):
        cls = g.classes_of_group(gi)
        assert [tuple(x) for x in g.class_ids[cls].tolist()] == sorted(groups[gid])  # classes sorted in a group
        for c in cls:
            assert g.images_of_class(c).tolist() == classes[tuple(g.class_ids[c].tolist())]
        images, labels = g.images_of_group(gi)
        assert images.tolist() == [i for c in cls for i in g.images_of_class(c).tolist()]
        assert labels.tolist() == [j for j, c in enumerate(cls) for _ in g.images_of_class(c)]
    assert g.class_ids.dtype == np.int64 and (g.images_per_class >= config.min_images_per_class).all()


def test_order_does_not_depend_on_the_list_order():
    names = _random_names(1500, seed=1)
    perm = np.random.default_rng(2).permutation(len(names))
    a = _build(names, GroupsConfig(min_images_per_class=2))
    b = _build([names[i] for i in perm], GroupsConfig(min_images_per_class=2))
    assert np.array_equal(a.group_ids, b.group_ids) and np.array_equal(a.class_ids, b.class_ids)
    assert [sorted(perm[b.images_of_class(c)].tolist()) for c in range(b.classes_num)] == \
           [a.images_of_class(c).tolist() for c in range(a.classes_num)]


def test_valid_mask_and_empty_input():
    e = np.array([5.0, 6.0, 7.0, 500.0])
    g = build_groups(e, e, np.zeros(4), GroupsConfig(min_images_per_class=2), valid=np.array([True, True, False, True]))
    assert g.classes_num == 1 and g.images_of_class(0).tolist() == [0, 1] and g.classes_before_filtering == 2
    empty = build_groups(np.zeros(0), np.zeros(0), np.zeros(0))
    assert empty.groups_num == 0 and empty.classes_num == 0 and empty.image_indices.size == 0


@pytest.mark.parametrize("bad", [{"M": 0}, {"alpha": -30}, {"N": 2.5}, {"min_images_per_class": True}])
def test_config_is_validated(bad):
    with pytest.raises(ConfigError):
        GroupsConfig(**bad)


def _folder(tmp_path, n=400, seed=0):
    root = tmp_path / "train"
    root.mkdir(parents=True, exist_ok=True)
    for name in _random_names(n, seed=seed, span=40.0):
        (root / name.split("/")[-1]).write_bytes(b"")
    return root


def test_cache_hit_skips_parsing(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    config = GroupsConfig(min_images_per_class=2)
    first = load_or_build_groups(read_image_list(root), config, cache_dir=tmp_path / "c")
    path = cache_path(read_image_list(root), config, tmp_path / "c")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left

    def no_parse(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(vg_names, "parse_vg_names", no_parse)
    second = load_or_build_groups(read_image_list(root), config, cache_dir=tmp_path / "c")
    for name in ("group_ids", "group_class_ptr", "class_ids", "class_image_ptr", "image_indices"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert second.config == config and second.classes_before_filtering == first.classes_before_filtering
    assert cache_path(read_image_list(root), GroupsConfig(min_images_per_class=3), tmp_path / "c") != path


def test_cache_invalidated_when_a_file_is_added(tmp_path):
    root = _folder(tmp_path)
    config = GroupsConfig(min_images_per_class=1)
    before = load_or_build_groups(read_image_list(root), config, cache_dir=tmp_path / "c")
    (root / format_vg_name(560000.0, 4190000.0, 10, "S", heading=90)).write_bytes(b"")
    images = read_image_list(root)
    after = load_or_build_groups(images, config, cache_dir=tmp_path / "c")
    assert after.images_num == before.images_num + 1 == len(images)
    assert after.image_indices.size == before.image_indices.size + 1


def test_corrupt_or_foreign_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    root = _folder(tmp_path)
    config = GroupsConfig(min_images_per_class=2)
    images = read_image_list(root)
    good = load_or_build_groups(images, config, cache_dir=tmp_path / "c")
    path = cache_path(images, config, tmp_path / "c")
    other = _folder(tmp_path / "o", n=300, seed=5)
    other_images = read_image_list(other)
    load_or_build_groups(other_images, config, cache_dir=tmp_path / "c")
    for content in (b"not a zip file", path.read_bytes()[:100], cache_path(other_images, config, tmp_path / "c").read_bytes()):
        path.write_bytes(content)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = load_or_build_groups(images, config, cache_dir=tmp_path / "c")
        assert "unusable" in caplog.text and str(path) in caplog.text
        assert np.array_equal(again.image_indices, good.image_indices)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_or_build_groups(images, config, cache_dir=tmp_path / "c")
    assert caplog.text == ""  # rewritten: a hit again


def test_cache_dir_default_and_unwritable(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PROGEO_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    images = read_image_list(_folder(tmp_path))
    assert str(cache_path(images, GroupsConfig()).parent).startswith(str(tmp_path / "env"))
    monkeypatch.delenv("PROGEO_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "progeo"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with caplog.at_level(logging.WARNING):
        g = load_or_build_groups(images, GroupsConfig(min_images_per_class=1), cache_dir=blocker)
    assert g.classes_num > 0 and "could not write the groups cache" in caplog.text


def test_train_set_groups_and_sampling(tmp_path):
    root = _folder(tmp_path, n=600)
    config = GroupsConfig(min_images_per_class=2)
    train = TrainSet.open(root, config, cache_dir=tmp_path / "c")
    assert train.groups_num == train.groups.groups_num > 1
    group = train.group(1)
    assert len(group) == group.classes_num == len(group.class_ids) and group.images_num == group.images_per_class.sum()
    rng = np.random.default_rng(0)
    for label in range(len(group)):
        path, y = group.sample(label, rng)
        assert y == label and path in group.image_paths(label) and os.path.exists(path)
    images, labels = group.all_images()
    assert images.size == labels.size == group.images_num and labels.max() == len(group) - 1
    assert [g.index for g in train.first_groups(2)] == [0, 1]
    with pytest.raises(ConfigError, match="lower groups_num"):
        train.first_groups(train.groups_num + 1)
    with pytest.raises(ConfigError, match="does not exist"):
        train.group(train.groups_num)
    with pytest.raises(IndexError):
        group.image_indices(len(group))
    with pytest.raises(DatasetError, match="lower min_images_per_class"):
        TrainSet.open(root, GroupsConfig(min_images_per_class=10_000), use_cache=False)


def test_train_set_needs_headings(tmp_path):
    root = tmp_path / "train"
    root.mkdir()
    (root / format_vg_name(550000.0, 4180000.0, 10, "S")).write_bytes(b"")
    with pytest.raises(DatasetError, match="field 9 'heading' is empty"):
        TrainSet.open(root, cache_dir=tmp_path / "c")


def test_image_list_input_from_memory():
    names = _random_names(200)
    images = ImageList.from_relative_paths("/nowhere", names)
    assert _build(images, GroupsConfig(min_images_per_class=1)).classes_num == \
        len(_reference(names, GroupsConfig(min_images_per_class=1))[0])
