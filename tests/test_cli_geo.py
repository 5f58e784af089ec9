"""``progeo zeroshot`` and ``progeo probe fit/eval`` end to end on the tiny world, and their bad-input errors."""

from __future__ import annotations

import csv
import json

import pytest

from progeo.cli import main


@pytest.fixture(scope="module")
def splits(tiny_world, tmp_path_factory):
    """Labels CSVs of the tiny world's train/val/test images (paths relative to the world)."""
    out = tmp_path_factory.mktemp("gem_splits")
    with open(tiny_world / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    files = {}
    for split in ("train", "val", "test"):
        files[split] = out / f"{split}.csv"
        with open(files[split], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(r for r in rows if r["path"].startswith(split + "/"))
    return files


def _model_args(pretrained_tiny_clip) -> list[str]:
    weights, backbone = pretrained_tiny_clip
    return ["--model", backbone, "--weights", str(weights)]


@pytest.fixture(scope="module")
def cache(pretrained_tiny_clip):
    return pretrained_tiny_clip[0].parent / "gem-cache"  # shared with the other GEM tests


def _common(cache, world) -> list[str]:
    return ["--images-dir", str(world), "--device", "cpu", "--cache-dir", str(cache), "--no-progress"]


def test_zeroshot_command_prints_and_writes_metrics(cache, pretrained_tiny_clip, tiny_world, splits, tmp_path, capsys):
    out = tmp_path / "zs"
    code = main(["zeroshot", *_model_args(pretrained_tiny_clip), "--images", str(splits["test"]),
                 "--places", str(tiny_world), "--level", "country", "--country-mode", "prompts", "--out", str(out),
                 "--predictions-format", "json", *_common(cache, tiny_world)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "zero-shot country" in printed and "median km" in printed and "most confused with" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["level"] == "country" and metrics["country_mode"] == "prompts" and metrics["classes"] == 2
    assert {"top1", "top5", "within_1km", "within_2500km", "median_km", "country_confusion"} <= set(metrics)
    preds = json.loads((out / "predictions.json").read_text())["images"]
    assert len(preds) == metrics["n_images"] and preds[0]["top1"] in ("Portugal", "Norway")


def test_zeroshot_on_a_folder_predicts_without_metrics(cache, pretrained_tiny_clip, tiny_world, tmp_path, capsys):
    code = main(["zeroshot", *_model_args(pretrained_tiny_clip), "--images", str(tiny_world / "test" / "queries"),
                 "--places", str(tiny_world / "world.json"), "--out", str(tmp_path / "o"), "--top-k", "2",
                 *_common(cache, tiny_world)[2:]])
    assert code == 0
    assert "more" in capsys.readouterr().out
    with open(tmp_path / "o" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30 and list(rows[0]) == ["image", "lat", "lon", "top1", "top1_country", "top1_cosine", "top2",
                                                 "top2_country", "top2_cosine"]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_zeroshot_reuses_the_places_text_features(pretrained_tiny_clip, tiny_world, tmp_path, capsys):
    def run(cache, out, *extra):
        code = main(["zeroshot", *_model_args(pretrained_tiny_clip), "--images", str(tiny_world / "test" / "queries"),
                     "--places", str(tiny_world), "--out", str(out), "--device", "cpu", "--cache-dir", str(cache),
                     "--no-progress", *extra])
        assert code == 0
        capsys.readouterr()
        return (out / "predictions.csv").read_text()

    first = run(tmp_path / "c", tmp_path / "o1")
    text_files = sorted((tmp_path / "c").glob("text-*.npy"))
    assert len(text_files) == 1
    written = text_files[0].stat().st_mtime_ns
    assert run(tmp_path / "c", tmp_path / "o2") == first  # the cached text features: identical predictions
    assert text_files[0].stat().st_mtime_ns == written
    assert run(tmp_path / "off", tmp_path / "o3", "--no-text-cache") == first
    assert not list((tmp_path / "off").glob("text-*")) and list((tmp_path / "off").glob("*.npy"))


def test_probe_fit_then_eval_and_model_mismatch(cache, pretrained_tiny_clip, tiny_world, splits, tmp_path, capsys):
    probe = tmp_path / "probe"
    code = main(["probe", "fit", *_model_args(pretrained_tiny_clip), "--train", str(splits["train"]),
                 "--train-images-dir", str(tiny_world), "--val-fraction", "0.2", "--grid", "1e-4", "1e-2", "--widen", "0",
                 "--out", str(probe), *_common(cache, tiny_world)[2:]])
    assert code == 0
    printed = capsys.readouterr().out
    assert "<- chosen" in printed and "3 city classes" in printed
    meta = json.loads((probe / "probe.json").read_text())
    assert meta["refit"] is True and set(meta["val_accuracy"]) == {"0.0001", "0.01"}  # --widen 0: as given
    code = main(["probe", "eval", "--probe", str(probe), "--images", str(splits["test"]), "--out", str(tmp_path / "ev"),
                 *_common(cache, tiny_world)])
    assert code == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["top1"] > 1 / 3 + 0.1 and metrics["top5"] is None
    code = main(["probe", "eval", "--probe", str(probe), "--images", str(splits["test"]), "--model", "tiny-vit",
                 *_common(cache, tiny_world)])
    assert code == 2
    assert "features" in capsys.readouterr().err


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _error(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    return err


def test_bad_inputs_are_one_line_errors(cache, pretrained_tiny_clip, tiny_world, splits, tmp_path, capsys):
    model = _model_args(pretrained_tiny_clip)
    with open(splits["test"], newline="") as f:
        first = next(csv.DictReader(f))
    unknown = _write_csv(tmp_path / "unknown.csv", ["path", "lat", "lon", "city", "country"],
                         [[first["path"], first["lat"], first["lon"], "Atlantis", "Portugal"]])
    err = _error(["zeroshot", *model, "--images", str(unknown), "--places", str(tiny_world),
                  *_common(cache, tiny_world)], capsys)
    assert "'Atlantis'" in err and "not a candidate" in err
    no_lat = _write_csv(tmp_path / "nolat.csv", ["image", "lon", "city"], [[first["path"], first["lon"], "Lisbon"]])
    err = _error(["zeroshot", *model, "--images", str(no_lat), "--places", str(tiny_world), "--flavour", "placepulse",
                  *_common(cache, tiny_world)], capsys)
    assert "nolat.csv" in err and "needs a 'lat' column" in err
    err = _error(["zeroshot", *model, "--images", str(no_lat), "--places", str(tiny_world),
                  *_common(cache, tiny_world)], capsys)
    assert "nolat.csv" in err and "cannot tell the CSV flavour" in err
    err = _error(["zeroshot", *model, "--images", str(tmp_path / "no_such_dir"), "--places", str(tiny_world)], capsys)
    assert "no_such_dir" in err and "not found" in err
    err = _error(["zeroshot", *model, "--images", str(splits["test"]), "--images-dir", str(tmp_path / "gone"),
                  "--places", str(tiny_world)], capsys)
    assert "gone does not exist" in err
    (tmp_path / "not_a_probe").mkdir()
    err = _error(["probe", "eval", "--probe", str(tmp_path / "not_a_probe"), "--images", str(splits["test"])], capsys)
    assert "not a linear probe" in err
    err = _error(["zeroshot", "--model", "tiny-rn", "--weights", str(tmp_path / "none.safetensors"),
                  "--images", str(splits["test"]), "--places", str(tiny_world), *_common(cache, tiny_world)], capsys)
    assert "weights file" in err and "not found" in err


def test_named_pretrained_model_fails_clearly_offline(tiny_world, splits, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("PROGEO_OFFLINE", "1")
    err = _error(["zeroshot", "--model", "ViT-B-32:openai", "--images", str(splits["test"]), "--places",
                  str(tiny_world), "--images-dir", str(tiny_world), "--device", "cpu"], capsys)
    assert "ViT-B-32:openai" in err and "--weights PATH" in err
