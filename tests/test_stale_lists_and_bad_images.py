"""A stale ``<folder>_images_paths.txt`` (an image deleted, one added) is named as such with the command that
regenerates it; ``check-dataset --verify-images [--full]`` lists truncated and corrupt images."""

from __future__ import annotations

import logging
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from progeo.cli import main
from progeo.data.image_lists import paths_file_for, read_image_list, write_paths_file
from progeo.data.images import iter_image_batches
from progeo.data.vg_names import format_vg_name
from progeo.data.verify_images import verify_image
from progeo.errors import ImageDecodeError

E0, N0 = 551000.0, 4180000.0


def _jpeg(path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def _names(k: int) -> list[str]:
    return [format_vg_name(E0 + 10 * (i // 4) + 0.1 * i, N0 + 1, 10, "S", heading=5, pano_id=f"p{i}") for i in range(k)]


def _age(paths_file, seconds: float = 60.0) -> None:
    """Date the list back, as when it was written before the folder changed."""
    t = time.time() - seconds
    os.utime(paths_file, (t, t))


def _delete_one_add_one(folder, names) -> tuple[str, str]:
    gone, new = names[1], format_vg_name(E0 + 3, N0 + 2, 10, "S", heading=5, pano_id="new")
    (folder / gone).unlink()
    _jpeg(folder / new, seed=99)
    return gone, new


def test_stale_list_warns_on_read_and_a_missing_listed_image_names_the_list(tmp_path, caplog):
    folder, names = tmp_path / "database", _names(24)
    for i, name in enumerate(names):
        _jpeg(folder / name, i)
    listed = write_paths_file(folder)
    _age(listed)
    gone, _ = _delete_one_add_one(folder, names)
    with caplog.at_level(logging.WARNING, logger="progeo.data.image_lists"):
        images = read_image_list(folder, verify_sample=4)  # the sample misses the deleted image
    assert len(images) == 24 and "may be stale" in caplog.text and str(listed) in caplog.text
    assert f"progeo list-images {folder}" in caplog.text
    with pytest.raises(ImageDecodeError) as err:
        for _ in iter_image_batches(images, 16, batch_size=8):
            pass
    msg = str(err.value)
    assert gone in msg and str(listed) in msg and "stale" in msg and f"progeo list-images {folder}" in msg
    assert "replace or delete the file" not in msg
    # a freshly written list is not suspect
    caplog.clear()
    write_paths_file(folder)
    with caplog.at_level(logging.WARNING, logger="progeo.data.image_lists"):
        assert len(read_image_list(folder)) == 24
    assert "stale" not in caplog.text


def test_check_dataset_finds_the_unlisted_image_of_a_stale_list(tmp_path, capsys):
    folder, names = tmp_path / "train", _names(24)
    for i, name in enumerate(names):
        _jpeg(folder / name, i)
    _age(write_paths_file(folder))
    gone, new = _delete_one_add_one(folder, names)
    code = main(["check-dataset", str(folder), "--min-images-per-class", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and f"the image list {paths_file_for(folder)} is stale: 1 image(s)" in out
    assert repr(new) in out and f"progeo list-images {folder}" in out
    # the --all-paths check finds the deleted one as well; list-images makes the folder clean again
    main(["check-dataset", str(folder), "--all-paths", "--min-images-per-class", "2"])
    assert repr(gone) in capsys.readouterr().out
    assert main(["list-images", str(folder)]) == 0
    assert "24 images" in capsys.readouterr().out
    assert main(["check-dataset", str(folder), "--min-images-per-class", "2"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_check_dataset_verify_images_headers_and_full(tmp_path, capsys):
    folder, names = tmp_path / "train", _names(12)
    for i, name in enumerate(names):
        _jpeg(folder / name, i)
    data = (folder / names[2]).read_bytes()
    (folder / names[2]).write_bytes(data[: len(data) // 2])  # truncated
    data = bytearray((folder / names[5]).read_bytes())  # a complete file with a broken Huffman table
    at = data.find(b"\xff\xc4")
    data[at + 5 : at + 25] = b"\xff" * 20
    (folder / names[5]).write_bytes(bytes(data))
    png = folder / names[7].replace(".jpg", ".png")
    Image.open(folder / names[7]).save(png)
    png.write_bytes(png.read_bytes()[:-30])  # truncated PNG
    (folder / names[7]).unlink()

    code = main(["check-dataset", str(folder), "--min-images-per-class", "2", "--no-progress"])
    assert code == 0 and "no problems found" in capsys.readouterr().out  # names alone look fine

    code = main(["check-dataset", str(folder), "--min-images-per-class", "2", "--verify-images", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and f"bad image {names[2]!r}" in out and "truncated" in out
    assert f"bad image {png.name!r}" in out and names[5] not in out  # headers and end marker are intact
    assert "train bad images" in out and "12 (headers)" in out

    code = main(["check-dataset", str(folder), "--min-images-per-class", "2", "--verify-images", "--full",
                 "--no-progress", "--workers", "2"])
    out = capsys.readouterr().out
    assert code == 1 and "problems (3):" in out and f"bad image {names[5]!r}" in out and "12 (full)" in out
    assert main(["check-dataset", str(folder), "--full"]) == 2


def test_verify_image_cases(tmp_path):
    good, empty, text = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    _jpeg(good)
    empty.write_bytes(b"")
    text.write_text("not an image")
    padded = tmp_path / "d.jpg"
    padded.write_bytes(good.read_bytes() + b"\x00" * 100)  # padding after the end marker is fine
    assert verify_image(good) is None and verify_image(good, full=True) is None and verify_image(padded) is None
    assert "unreadable header" in verify_image(empty) and "unreadable header" in verify_image(text)
    assert verify_image(tmp_path / "missing.jpg") == "does not exist"


def test_eval_on_a_stale_list_says_so_and_list_images_fixes_it(tiny_world, tmp_path, caplog, capsys):
    import torch

    from progeo.models import build_model, save_model

    torch.manual_seed(0)
    model = save_model(build_model("tiny-vit"), tmp_path / "model")
    test = tmp_path / "test"
    shutil.copytree(tiny_world / "test", test, ignore=shutil.ignore_patterns("queries_*"))
    for name in ("database", "queries"):
        shutil.copy2(tiny_world / "test" / f"{name}_images_paths.txt", test)
    db = test / "database"
    _age(paths_file_for(db))
    names = sorted(os.listdir(db))
    shutil.copy2(db / names[0], db / names[0].replace("@.jpg", "copy@.jpg"))  # an added image
    (db / names[len(names) // 3]).unlink()  # a deleted one, outside the existence sample
    args = ["eval", "--model", str(model), "--test-set", str(test), "--device", "cpu", "--no-progress",
            "--threads", "1", "--out"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, str(tmp_path / "stale")]) == 2
    err = capsys.readouterr().err
    assert "may be stale" in caplog.text and f"progeo list-images {db}" in caplog.text
    assert f"listed in {paths_file_for(db)}" in err and "stale" in err and "replace or delete" not in err
    assert main(["list-images", str(db)]) == 0
    assert main([*args, str(tmp_path / "out")]) == 0
    capsys.readouterr()
    import json

    result = json.loads(next((tmp_path / "out").rglob("results.json")).read_text())["results"][0]
    assert result["database_num"] == len(names)  # one deleted, one added: every image on disk is in
