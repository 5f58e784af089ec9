"""Image lists: the paths file beside a folder, or a sorted recursive walk; clear errors."""

import os

import pytest

from progeo.data.image_lists import (ImageList, paths_file_for, read_image_list, sample_indices, walk_images,
                                     write_paths_file)
from progeo.data.vg_names import format_vg_name
from progeo.errors import DatasetError


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _names(k):
    return [format_vg_name(550000.0 + 7 * i, 4180000.0 + 3 * i, 10, "S", heading=30 * i) for i in range(k)]


def test_walk_is_recursive_sorted_and_filters_extensions(tmp_path):
    root = tmp_path / "train"
    n = _names(4)
    _touch(root / "b" / n[0])
    _touch(root / "a" / "deep" / n[1].replace(".jpg", ".PNG"))
    _touch(root / n[2].replace(".jpg", ".jpeg"))
    _touch(root / "a" / n[3].replace(".jpg", ".JPG"))
    _touch(root / "a" / "notes.txt")
    _touch(root / "a" / "thumbs.db")
    images = read_image_list(root)
    rel = [images.relative_path(i) for i in range(len(images))]
    assert rel == sorted(rel) and len(rel) == 4
    assert os.path.join("a", "deep", n[1].replace(".jpg", ".PNG")) in rel
    assert images.source is None and images[0] == os.path.join(str(root), rel[0])
    assert list(images) == [images[i] for i in range(4)] and images[-1] == images[3]
    assert [images.relative_path(i) for i in range(4)] == [walk_images(root).relative_path(i) for i in range(4)]


def test_paths_file_is_used_and_relative_to_the_folder_itself(tmp_path):
    root = tmp_path / "train"
    n = _names(3)
    for name in n:
        _touch(root / "37" / name)
    _touch(root / "37" / "unlisted.jpg")
    listed = [f"37/{n[2]}", f"37/{n[0]}"]  # its own order, a subset of the folder
    (tmp_path / "train_images_paths.txt").write_bytes(("\r\n".join(["", listed[0], "", listed[1]]) + "\r\n\n").encode())
    images = read_image_list(root)
    assert images.source == paths_file_for(root) == tmp_path / "train_images_paths.txt"
    assert [images.relative_path(i) for i in range(len(images))] == listed
    assert images[0] == os.path.join(str(root), "37", n[2])
    assert "train_images_paths.txt" in images.origin
    # the walk ignores the paths file when asked to
    assert len(read_image_list(root, use_paths_file=False)) == 4


def test_stale_paths_file_is_an_error_naming_it(tmp_path):
    root = tmp_path / "train"
    n = _names(3)
    _touch(root / n[0])
    write_paths_file(root, [n[0], n[1], f"train/{n[2]}"])  # n[1] missing; 'train/' prefix wrong
    with pytest.raises(DatasetError) as err:
        read_image_list(root)
    msg = str(err.value)
    assert "train_images_paths.txt" in msg and "stale" in msg and "2 of the 3" in msg and "relative to" in msg


def test_missing_empty_and_non_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_image_list(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match="is not a folder"):
        read_image_list(tmp_path / "file.jpg")
    empty = tmp_path / "empty"
    _touch(empty / "sub" / "readme.txt")
    with pytest.raises(DatasetError) as err:
        read_image_list(empty)
    assert str(empty) in str(err.value) and "no images (.jpg, .jpeg, .png)" in str(err.value)


def test_paths_file_listing_nothing_or_unreadable(tmp_path):
    root = tmp_path / "db"
    _touch(root / _names(1)[0])
    paths_file_for(root).write_text("\n\n")
    with pytest.raises(DatasetError, match="lists no images"):
        read_image_list(root)
    paths_file_for(root).unlink()
    paths_file_for(root).mkdir()  # a folder where the file should be: unreadable
    with pytest.raises(DatasetError, match="cannot read the image list"):
        read_image_list(root)


def test_content_hash_follows_the_list(tmp_path):
    root = tmp_path / "t"
    n = _names(3)
    _touch(root / n[0])
    _touch(root / n[1])
    h1 = read_image_list(root).content_hash
    assert read_image_list(root).content_hash == h1
    _touch(root / n[2])
    assert read_image_list(root).content_hash != h1


def test_write_paths_file_round_trip(tmp_path):
    root = tmp_path / "t"
    for name in _names(5):
        _touch(root / "x" / name)
    target = write_paths_file(root)
    assert target == tmp_path / "t_images_paths.txt"
    assert list(read_image_list(root)) == list(read_image_list(root, use_paths_file=False))


def test_sample_indices_and_slices():
    assert sample_indices(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert sample_indices(3, 16).tolist() == [0, 1, 2] and sample_indices(0, 4).size == 0
    images = ImageList.from_relative_paths("/r", ["a.jpg", "b.jpg", "c.jpg"])
    assert images[1:] == ["/r/b.jpg", "/r/c.jpg"] and len(images) == 3
