"""``progeo check-dataset``: counts, every problem, exit codes 0 / 1 / 2."""

import re

import numpy as np
import pytest

from progeo.cli import main
from progeo.data.checks import check_dataset
from progeo.data.image_lists import write_paths_file
from progeo.data.vg_names import NAME_TEMPLATE, format_vg_name
from progeo.errors import ConfigError

E0, N0 = 551000.0, 4180000.0


def _touch(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def _train_names(classes=6, per_class=4):
    """``classes`` classes 10 m apart (east), ``per_class`` images each, heading 0."""
    return [format_vg_name(E0 + 10 * c + 0.5 + 0.1 * i, N0 + 1, 10, "S", heading=5, pano_id=f"c{c}i{i}")
            for c in range(classes) for i in range(per_class)]


def _run(capsys, *args):
    code = main(["check-dataset", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_good_train_folder(tmp_path, capsys):
    _touch(tmp_path / "train", _train_names())
    _touch(tmp_path / "train", [format_vg_name(E0 + 500, N0, 10, "S", heading=90)])  # a class of 1: dropped
    code, out, _ = _run(capsys, tmp_path / "train", "--min-images-per-class", 3)
    assert code == 0 and "no problems found" in out and "train set" in out
    for label, value in [("train images", "25"), ("classes", "7"), ("classes with >= 3 images", "6"),
                         ("images in those classes", "24"), ("images per class min/median/max", "4/4/4"),
                         ("groups", "5"), ("train UTM zones", "10S"), ("train malformed names", "0")]:
        assert re.search(rf"^  {re.escape(label)} +{re.escape(value)}$", out, re.M), label


def test_malformed_names_are_all_listed_and_capped(tmp_path, capsys):
    bad = ["@1@2@.jpg", "no_at_all.jpg", format_vg_name(E0, N0).replace(".jpg", ".png"),
           "@abc" + format_vg_name(E0, N0, heading=3)[len(f"@{E0:.2f}"):]]
    _touch(tmp_path / "train", _train_names() + bad)
    code, out, _ = _run(capsys, tmp_path / "train", "--max-listed", 3, "--min-images-per-class", 4)
    assert code == 1 and "problems (4):" in out and NAME_TEMPLATE in out
    assert re.search(r"^  train malformed names +4$", out, re.M)
    assert "malformed name '@1@2@.jpg'" in out and "found 3 '@'" in out
    assert "field 9 'heading' is empty" in out and "field 1 'utm_east' is 'abc'" in out
    assert "'no_at_all.jpg'" not in out and "... and 1 more problems in train names" in out  # sorted last
    code, out, _ = _run(capsys, tmp_path / "train", "--min-images-per-class", 4)
    assert "'no_at_all.jpg'" in out and "more problems" not in out and "problems (4):" in out


def test_stale_paths_file_lists_missing_paths(tmp_path, capsys):
    names = _train_names()
    _touch(tmp_path / "train", names[:20])
    write_paths_file(tmp_path / "train", names + ["gone/" + names[0]])
    code, out, _ = _run(capsys, tmp_path / "train", "--all-paths")
    assert code == 1 and "train_images_paths.txt (paths file)" in out
    assert "5 of 25 checked entries of" in out and "train_images_paths.txt do not exist" in out
    assert "'gone/" in out and "relative to" in out


def test_empty_and_unreadable(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    code, out, _ = _run(capsys, tmp_path / "train")
    assert code == 1 and "is empty" in out and str(tmp_path / "train") in out
    _touch(tmp_path / "t2", _train_names())
    (tmp_path / "t2_images_paths.txt").mkdir()  # unreadable paths file
    code, out, _ = _run(capsys, tmp_path / "t2")
    assert code == 1 and "cannot read the image list" in out and "t2_images_paths.txt" in out


def test_no_class_large_enough_is_a_problem(tmp_path, capsys):
    _touch(tmp_path / "train", _train_names(per_class=2))
    code, out, _ = _run(capsys, tmp_path / "train")
    assert code == 1 and "no class has 10 images or more" in out


def test_unusable_input_exits_2(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path / "missing")
    assert code == 2 and "does not exist" in err and "missing" in err
    _touch(tmp_path / "ts" / "queries_v1", _train_names(1, 1))
    code, _, err = _run(capsys, tmp_path / "ts", "--queries", "queries_v2")
    assert code == 2 and "choose one of: queries_v1" in err
    code, _, err = _run(capsys, tmp_path / "ts", "--positive-dist", 0)
    assert code == 2 and "positive_dist" in err
    code, _, err = _run(capsys, tmp_path / "ts", "--M", 0)
    assert code == 2 and "GroupsConfig.M" in err


def test_test_folder(tmp_path, capsys):
    db = [format_vg_name(E0 + 10 * i, N0, 10, "S") for i in range(8)]
    _touch(tmp_path / "ts" / "database", db)
    _touch(tmp_path / "ts" / "queries_v1", [format_vg_name(E0 + 3, N0 + 2, 10, "S"), format_vg_name(E0 + 900, N0, 10, "S")])
    _touch(tmp_path / "ts" / "queries_night", [format_vg_name(E0 + 30, N0 - 5, 10, "S")])
    code, out, _ = _run(capsys, tmp_path / "ts")
    assert code == 0 and "test set" in out
    for label, value in [("database images", "8"), ("queries_v1 images", "2"), ("queries_night images", "1"),
                         ("queries_v1 without positives (<= 25 m)", "1"),
                         ("queries_night without positives (<= 25 m)", "0")]:
        assert re.search(rf"^  {re.escape(label)} +{re.escape(value)}$", out, re.M), label
    assert "1 of 2 queries in queries_v1/ have no database image within 25 m" in out
    code, out, _ = _run(capsys, tmp_path / "ts", "--queries", "queries_night", "--positive-dist", 1000)
    assert code == 0 and "queries_v1" not in out and "queries_night without positives (<= 1000 m)" in out


def test_test_folder_problems(tmp_path, capsys):
    _touch(tmp_path / "ts" / "queries", [format_vg_name(E0, N0), "@@@.jpg"])
    code, out, _ = _run(capsys, tmp_path / "ts", "--kind", "test")
    assert code == 1 and "database folder" in out and "does not exist" in out and "'@@@.jpg'" in out
    _touch(tmp_path / "only_db" / "database", [format_vg_name(E0, N0)])
    code, out, _ = _run(capsys, tmp_path / "only_db")
    assert code == 1 and "no query folder" in out
    _touch(tmp_path / "noutm" / "database", [format_vg_name(None, N0)])
    _touch(tmp_path / "noutm" / "queries", [format_vg_name(E0, N0)])
    code, out, _ = _run(capsys, tmp_path / "noutm")
    assert code == 1 and "field 1 'utm_east' is empty" in out


def test_library_report_object(tmp_path):
    _touch(tmp_path / "train", _train_names(classes=3, per_class=10))
    report = check_dataset(tmp_path / "train")
    assert report.ok and report.kind == "train" and report.counts["groups"] == 3
    assert report.counts["train images"] == 30 and report.problems == []
    with pytest.raises(ConfigError):
        check_dataset(tmp_path / "train", kind="val")
    assert np.isscalar(report.counts["classes"])
