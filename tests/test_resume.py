"""Resume: a stage-2 run killed mid-epoch and resumed ends with the weights of an uninterrupted run."""

from __future__ import annotations

import csv

import pytest
import torch

from progeo.config import Stage1Config, Stage2Config
from progeo.errors import CheckpointError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts(tiny_world, tmp_path_factory):
    from progeo.train.stage1 import run_stage1

    tmp = tmp_path_factory.mktemp("stage1")
    cfg = Stage1Config(train_set=str(tiny_world / "train"), backbone="tiny-vit", out_dir=str(tmp / "run"),
                       image_size=None, epochs=2, groups_num=2, device="cpu", progress=False, tensorboard=False,
                       feature_cache_dir=str(tmp / "features"), groups_cache_dir=str(tmp / "groups"))
    return run_stage1(cfg).prompts_path


def _flags(tiny_world, prompts, out, groups) -> list[str]:
    return ["train", "stage2", "--train-set", str(tiny_world / "train"), "--val-set", str(tiny_world / "val"),
            "--backbone", "tiny-vit", "--prompts", str(prompts), "--out-dir", str(out), "--image-size", "64",
            "--groups-num", "2", "--epochs", "2", "--iterations-per-epoch", "5", "--batch-size", "8", "--lr", "1e-4",
            "--freeze-trans", "2", "--triplet-weight", "0.5", "--device", "cpu", "--no-progress", "--no-tensorboard",
            "--groups-cache-dir", str(groups)]


def _final_state(run_dir):
    from progeo.train.run_dir import load_state

    return load_state(run_dir / "checkpoints" / "state.safetensors")


def _assert_same_tree(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")


def test_killed_and_resumed_run_equals_uninterrupted_run(tiny_world, tmp_path, prompts, capsys):
    from progeo.cli import main

    groups = tmp_path / "groups"
    assert main(_flags(tiny_world, prompts, tmp_path / "full", groups)) == 0
    # killed after 8 iterations (epoch 1, iteration 3); the last checkpoint is at epoch 1, iteration 2
    assert main(_flags(tiny_world, prompts, tmp_path / "killed", groups) + ["--checkpoint-every", "2", "--stop-after", "8"]) == 0
    assert "--resume" in capsys.readouterr().out
    saved = _final_state(tmp_path / "killed")
    assert (saved["epoch"], saved["iteration"]) == (1, 2)
    assert main(["train", "stage2", "--resume", str(tmp_path / "killed")]) == 0  # options from the run's config.json
    full, resumed = _final_state(tmp_path / "full"), _final_state(tmp_path / "killed")
    assert (resumed["epoch"], resumed["iteration"]) == (2, 0)
    for key in ("model", "optimizer", "classifiers", "classifier_optimizers"):
        _assert_same_tree(full[key], resumed[key], key)
    assert resumed["best_r1"] == full["best_r1"] and resumed["history"] == full["history"]
    with open(tmp_path / "killed" / "epochs.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]  # no duplicated rows after the resume


def test_resume_without_a_state_is_explained(tiny_world, tmp_path, prompts):
    from progeo.train.stage2 import run_stage2

    cfg = Stage2Config(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), backbone="tiny-vit",
                       prompts=str(prompts), image_size=64, groups_num=2, device="cpu", progress=False,
                       resume=str(tmp_path / "nothing"), groups_cache_dir=str(tmp_path / "groups"))
    with pytest.raises(CheckpointError, match="no training state"):
        run_stage2(cfg)
