"""Every file progeo reads, truncated or overwritten with random bytes, makes the real command
fail with exit code 2 and one line that names the file (issue 11, point 2): models, index
folders, saved descriptors, configs, run folders, prompts, probes and image lists. Damaged
caches are rebuilt with a warning instead (tests of progeo.cache, groups and text features)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from progeo.cli import main

FAST = ["--device", "cpu", "--num-workers", "0", "--no-progress", "--threads", "1"]
pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_threads")


@pytest.fixture(scope="module")
def files(tiny_world, tmp_path_factory) -> Path:
    """Valid files of every kind (damaged one at a time by the tests, then restored)."""
    from safetensors.torch import save_file

    from progeo.config import ModelConfig, PretrainConfig, Stage2Config
    from progeo.config_files import config_to_dict
    from progeo.geo import ClassTable
    from progeo.geo.features import ModelSpec
    from progeo.geo.probe import LinearProbe
    from progeo.models import build_model, save_model

    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = build_model("tiny-vit")
    save_model(model, root / "model")
    save_model(model, root / "model.safetensors")
    torch.save(model.state_dict(), root / "checkpoint.pth")
    assert main(["index", "build", "--model", str(root / "model"), "--database", str(tiny_world / "test" / "database"),
                 "--out", str(root / "index"), *FAST]) == 0
    assert main(["eval", "--model", str(root / "model"), "--test-set", str(tiny_world / "test"), "--out",
                 str(root / "eval"), "--save-descriptors", str(root / "saved"), *FAST]) == 0
    shutil.copytree(tiny_world / "test", root / "test")  # with its *_images_paths.txt lists
    shutil.copy(tiny_world / "labels.csv", root / "labels.csv")
    (root / "templates.txt").write_text("a photo taken in {city}.\n" * 40)

    stage2 = config_to_dict(Stage2Config(train_set=str(tiny_world / "train"), model=ModelConfig("tiny-vit"), epochs=1))
    (root / "stage2.json").write_text(json.dumps(stage2, indent=1))
    (root / "stage2.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in stage2.items()))
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    pretrain = PretrainConfig(world=str(tiny_world), backbone="tiny-rn", out_dir=str(run), max_images=16, epochs=1,
                              batch_size=8, device="cpu", progress=False, tensorboard=False)
    (run / "config.json").write_text(json.dumps(config_to_dict(pretrain), indent=1))
    save_file({"step": torch.zeros(64)}, str(run / "checkpoints" / "state.safetensors"), metadata={"format": "?"})

    save_file({"group.0.cls_ctx": torch.zeros(3, 4, 8), "token_prefix": torch.zeros(3, 1, 8)},
              str(root / "prompts.safetensors"), metadata={"progeo": json.dumps({"format": "progeo-prompts"})})
    classes = ClassTable("city", ["Oslo", "Kyoto"], ["Norway", "Japan"], np.array([59.9, 35.0]), np.array([10.7, 135.8]))
    rng, spec = np.random.default_rng(0), ModelSpec("tiny-rn", None, "tiny-rn", 4, "ab" * 20)
    LinearProbe(classes, rng.normal(size=(2, 4)).astype(np.float32), np.zeros(2, np.float32), np.zeros(4, np.float32),
                np.ones(4, np.float32), spec, 1e-3, {1e-3: 0.9}).save(root / "probe")
    return root


def _commands(root: Path, world: Path, out: Path) -> dict[str, tuple[str, list[str]]]:
    """kind -> (file to damage, relative to ``root``; the command that reads it)."""
    test, photo = str(root / "test"), str(sorted((world / "test" / "queries").iterdir())[0])
    evaluate = ["eval", "--test-set", test, "--out", str(out), *FAST]
    localize = ["localize", photo, "--index", str(root / "index"), *FAST]
    saved = ["eval", "--descriptors", str(root / "saved"), "--out", str(out), *FAST]
    stage2 = ["train", "stage2", "--out-dir", str(out), "--device", "cpu", "--no-progress", "--no-tensorboard"]
    probe = ["probe", "eval", "--probe", str(root / "probe"), "--images"]
    return {
        "model weights": ("model/model.safetensors", [*evaluate, "--model", str(root / "model")]),
        "model config": ("model/config.json", [*evaluate, "--model", str(root / "model")]),
        "single-file model": ("model.safetensors", [*evaluate, "--model", str(root / "model.safetensors")]),
        "index model weights": ("index/model/model.safetensors", localize),
        "index model config": ("index/model/config.json", localize),
        "faiss index": ("index/index.faiss", localize),
        "faiss index config": ("index/index.faiss.json", localize),
        "index coordinates": ("index/coordinates.npz", localize),
        "index description": ("index/index.json", localize),
        "index image paths": ("index/descriptors/paths.txt", localize),
        "descriptors": ("saved/tiny_world__test/database/descriptors.npy", saved),
        "descriptors metadata": ("saved/tiny_world__test/database/meta.json", saved),
        "descriptors paths": ("saved/tiny_world__test/queries/paths.txt", saved),
        "descriptors UTMs": ("saved/tiny_world__test/queries/utms.npy", saved),
        "image list": ("test/database_images_paths.txt", [*evaluate, "--model", str(root / "model")]),
        "JSON config": ("stage2.json", [*stage2, "--config", str(root / "stage2.json")]),
        "YAML config": ("stage2.yaml", [*stage2, "--config", str(root / "stage2.yaml")]),
        "run config": ("run/config.json", ["pretrain", "--resume", str(root / "run")]),
        "training state": ("run/checkpoints/state.safetensors", ["pretrain", "--resume", str(root / "run")]),
        "prompts": ("prompts.safetensors", [*stage2, "--train-set", str(world / "train"), "--val-set",
                                            str(world / "val"), "--backbone", "tiny-vit",
                                            "--groups-num", "1", "--prompts", str(root / "prompts.safetensors")]),
        "import-prompts input": ("checkpoint.pth", ["import-prompts", str(root / "checkpoint.pth"), "--out",
                                                    str(out / "p.safetensors")]),
        "import-checkpoint input": ("checkpoint.pth", ["import-checkpoint", str(root / "checkpoint.pth"), "--backbone",
                                                       "tiny-vit", "--out", str(out / "m")]),
        "probe description": ("probe/probe.json", [*probe, test]),
        "probe weights": ("probe/probe.safetensors", [*probe, test]),
        "labels CSV": ("labels.csv", [*probe, str(root / "labels.csv")]),
        "templates": ("templates.txt", ["zeroshot", "--model", "tiny-rn", "--images", test, "--templates",
                                        str(root / "templates.txt"), "--device", "cpu", "--no-progress"]),
    }


KINDS = ["model weights", "model config", "single-file model", "index model weights", "index model config",
         "faiss index", "faiss index config", "index coordinates", "index description", "index image paths",
         "descriptors", "descriptors metadata", "descriptors paths", "descriptors UTMs", "image list", "JSON config",
         "YAML config", "run config", "training state", "prompts", "import-prompts input", "import-checkpoint input",
         "probe description", "probe weights", "labels CSV", "templates"]
#: Text cut at a line is still a valid file with fewer entries, checked like any other.
VALID_WHEN_CUT = {"YAML config", "templates"}


def damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    else:  # random bytes of the same length
        file.write_bytes(np.random.default_rng(len(data)).integers(0, 256, len(data), dtype=np.uint8).tobytes())


@pytest.mark.parametrize("how", ["truncated", "random"])
@pytest.mark.parametrize("kind", KINDS)
def test_damaged_file_fails_with_one_line_naming_it(files, tiny_world, tmp_path, capsys, kind, how):
    if kind in VALID_WHEN_CUT and how == "truncated":
        pytest.skip("text cut at a line is a valid file with fewer entries")
    relative, argv = _commands(files, tiny_world, tmp_path / "out")[kind]
    file = files / relative
    original = file.read_bytes()
    capsys.readouterr()
    try:
        damage(file, how)
        code = main(argv)
    finally:
        file.write_bytes(original)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "faiss::" not in err and "Traceback" not in err, err
    assert str(file) in err or f"{file.parent}" in err and file.name in err, err
    fixes = ("again", "rebuild", "regenerate", "restore", "correct", "delete", "save it as", "quote")
    assert any(word in err for word in fixes), err


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "progeo", *argv, *FAST], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow
def test_damaged_model_and_index_in_a_real_process(files, tiny_world, tmp_path):
    """The issue's reports: `progeo eval --model M` with a truncated M/model.safetensors printed a
    20-line SafetensorError traceback, a truncated index.faiss faiss's C++ text. Nothing but the
    error line reaches stderr (no traceback, no log line)."""
    model, index = tmp_path / "model", tmp_path / "index"
    shutil.copytree(files / "model", model)
    shutil.copytree(files / "index", index)
    damage(model / "model.safetensors", "truncated")
    damage(index / "index.faiss", "truncated")
    proc = _run(["eval", "--model", str(model), "--test-set", str(tiny_world / "test"), "--out", str(tmp_path / "o")])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"progeo eval: error: saved model weights {model / 'model.safetensors'} is unreadable: truncated or corrupt "
        f"(Error while deserializing header: incomplete metadata, file not fully covered); restore it from a copy or "
        f"save it again (the training run that wrote it, or `progeo import-checkpoint` for an imported checkpoint)"]
    photo = sorted((tiny_world / "test" / "queries").iterdir())[0]
    proc = _run(["localize", str(photo), "--index", str(index)])
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"progeo localize: error: faiss index {index / 'index.faiss'} is unreadable: truncated or "
                           "corrupt ('ret == (size)' failed: read error in"), line
    assert line.endswith(f"; rebuild the index: `progeo index build --model {files / 'model'} --database "
                         f"{tiny_world / 'test' / 'database'} --out {index}`"), line


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_damaged_run_metrics_are_rewritten_with_a_warning(tmp_path, caplog, how):
    from progeo.train.run_dir import RunDir

    run = RunDir(tmp_path / "run", tensorboard=False)
    run.write_metrics({"best_epoch": 3, "R@1": 50.0})
    damage(tmp_path / "run" / "metrics.json", how)
    run.write_metrics({"finished": True})
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {"finished": True}
    assert any("metrics.json is unreadable" in r.getMessage() for r in caplog.records)


def test_damaged_training_log_is_named_on_resume(tmp_path):
    from progeo.errors import CheckpointError
    from progeo.train.run_dir import RunDir

    run = RunDir(tmp_path / "run", tensorboard=False)
    for epoch in range(40):
        run.log("epochs", {"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    damage(tmp_path / "run" / "epochs.csv", "random")
    with pytest.raises(CheckpointError, match=r"^training log .*epochs\.csv is unreadable: truncated or corrupt "
                                              r"\(not UTF-8 text: .*\); restore it from a copy, or delete it"):
        RunDir(tmp_path / "run", tensorboard=False).drop_rows_after("epochs", "epoch", 3)


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_damaged_feature_caches_are_recomputed_with_a_warning(tiny_world, tmp_path, capsys, caplog, how):
    """Caches are not errors: `progeo zeroshot` warns naming each damaged image / text feature
    cache file, recomputes it and prints the same predictions."""
    from safetensors.torch import save_file

    from progeo.models.backbones import load_clip

    torch.manual_seed(0)  # fixed weights, so that the second run looks for the same cache files
    weights, cache = tmp_path / "clip.safetensors", tmp_path / "cache"
    save_file({k: v.contiguous() for k, v in load_clip("tiny-rn").model.state_dict().items()}, str(weights))
    argv = ["zeroshot", "--model", "tiny-rn", "--weights", str(weights), "--images", str(tiny_world / "test" / "queries"),
            "--places", str(tiny_world), "--cache-dir", str(cache), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    caches = sorted(cache.rglob("*.npy"))
    assert {f.name.split("-")[0] for f in caches} == {"tiny", "text"}, caches  # image and text features
    for file in caches:
        damage(file, how)
    caplog.clear()
    assert main(argv) == 0
    assert capsys.readouterr().out == first
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert all(str(f) in warned for f in caches) and "recomputing" in warned, warned
