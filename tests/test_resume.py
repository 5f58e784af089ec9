"""Resume: a run of any stage (pretraining, stage 1, stage 2) killed mid-epoch and resumed ends with the
weights of an uninterrupted run; wrong folders, changed configs and finished runs are handled clearly."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from progeo.config import ModelConfig, Stage1Config, Stage2Config
from progeo.errors import CheckpointError, ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts(tiny_world, tmp_path_factory):
    from progeo.train.stage1 import run_stage1

    tmp = tmp_path_factory.mktemp("stage1")
    cfg = Stage1Config(train_set=str(tiny_world / "train"), model=ModelConfig("tiny-vit"), out_dir=str(tmp / "run"),
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
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert main(["train", "stage2", "--resume", str(tmp_path / "killed")]) == 0  # options from the run's config.json
    full, resumed = _final_state(tmp_path / "full"), _final_state(tmp_path / "killed")
    assert (resumed["epoch"], resumed["step"]) == (2, 0)
    for key in ("model", "optimizer", "classifiers", "classifier_optimizers"):
        _assert_same_tree(full[key], resumed[key], key)
    assert resumed["best_r1"] == full["best_r1"] and resumed["history"] == full["history"]
    with open(tmp_path / "killed" / "epochs.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]  # no duplicated rows after the resume
    # a finished run resumed: said so, nothing evaluated or rewritten
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "killed").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "stage2", "--resume", str(tmp_path / "killed")]) == 0
    assert "had already finished; nothing was trained or changed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "killed").rglob("*") if p.is_file()} == files


def test_resume_without_a_state_is_explained(tiny_world, tmp_path, prompts):
    from progeo.train.stage2 import run_stage2

    cfg = Stage2Config(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), model=ModelConfig("tiny-vit"),
                       prompts=str(prompts), image_size=64, groups_num=2, device="cpu", progress=False,
                       resume=str(tmp_path / "nothing"), groups_cache_dir=str(tmp_path / "groups"))
    with pytest.raises(CheckpointError, match="no training state"):
        run_stage2(cfg)


# -- stage 1 and pretraining -------------------------------------------------------------------


def _stage1_flags(tiny_world, tmp_path, out) -> list[str]:
    return ["train", "stage1", "--train-set", str(tiny_world / "train"), "--backbone", "tiny-vit", "--out-dir",
            str(out), "--groups-num", "2", "--epochs", "4", "--batch-size", "16", "--device", "cpu", "--no-progress",
            "--no-tensorboard", "--feature-cache-dir", str(tmp_path / "features"),
            "--groups-cache-dir", str(tmp_path / "groups")]


def _fails(capsys, args, pattern) -> None:
    """The command exits with 2 and prints one error line matching ``pattern``."""
    from progeo.cli import main

    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and err.count("\n") == 1, err


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_stage1_killed_and_resumed_equals_uninterrupted_run(tiny_world, tmp_path, capsys):
    from progeo.cli import main

    assert main(_stage1_flags(tiny_world, tmp_path, tmp_path / "full")) == 0
    # 5 batches per epoch (72 images of a group, batch 16): killed after 8 batches (epoch 1, batch 3);
    # the last checkpoint is at epoch 1, batch 2
    killed = tmp_path / "killed"
    assert main(_stage1_flags(tiny_world, tmp_path, killed) + ["--checkpoint-every", "2", "--stop-after", "8"]) == 0
    assert f"--resume {killed}" in capsys.readouterr().out
    saved = _final_state(killed)
    assert (saved["kind"], saved["epoch"], saved["step"]) == ("stage1", 1, 2)
    assert not (killed / "prompts.safetensors").exists()
    assert main(["train", "stage1", "--resume", str(killed)]) == 0  # options from the run's config.json
    full, resumed = _final_state(tmp_path / "full"), _final_state(killed)
    assert (resumed["epoch"], resumed["step"]) == (4, 0)
    for key in ("learners", "optimizer"):
        _assert_same_tree(full[key], resumed[key], key)
    assert resumed["losses"] == full["losses"]
    _assert_same_tree(_tensors(tmp_path / "full" / "prompts.safetensors"), _tensors(killed / "prompts.safetensors"))
    with open(killed / "epochs.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2", "3"]  # no duplicated rows

    # a finished run resumed: said so, nothing rewritten
    files = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "stage1", "--resume", str(killed)]) == 0
    assert f"{killed} had already finished; nothing was trained or changed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == files

    # a new run into the finished run's folder is refused; --overwrite replaces it
    _fails(capsys, _stage1_flags(tiny_world, tmp_path, killed) + ["--epochs", "2"],
           rf"--out-dir {killed} already holds a stage-1 run .*prompts\.safetensors.*--resume {killed}.*--overwrite")
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == files
    assert main(_stage1_flags(tiny_world, tmp_path, killed) + ["--epochs", "2", "--overwrite"]) == 0
    with open(killed / "epochs.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1"]  # the old run's rows are gone
    assert json.loads((killed / "config.json").read_text())["overwrite"] is False  # a one-off, not repeated


@pytest.mark.slow
def test_pretraining_killed_and_resumed_equals_uninterrupted_run(tiny_world, tmp_path, capsys):
    from progeo.cli import main

    def flags(out):
        return ["pretrain", "--world", str(tiny_world), "--backbone", "tiny-rn", "--out-dir", str(out), "--epochs",
                "2", "--batch-size", "64", "--max-images", "256", "--warmup-steps", "2", "--device", "cpu",
                "--no-progress", "--no-tensorboard", "--checkpoint-every", "2"]

    assert main(flags(tmp_path / "full")) == 0
    killed = tmp_path / "killed"
    # 4 steps per epoch: killed after 7 steps (epoch 1, step 3); the last checkpoint is at epoch 1, step 2
    assert main(flags(killed) + ["--stop-after", "7"]) == 0
    assert f"--resume {killed}" in capsys.readouterr().out
    saved = _final_state(killed)
    assert (saved["kind"], saved["epoch"], saved["step"]) == ("pretrain", 1, 2)
    assert main(["pretrain", "--resume", str(killed)]) == 0
    full, resumed = _final_state(tmp_path / "full"), _final_state(killed)
    for key in ("model", "optimizer"):
        _assert_same_tree(full[key], resumed[key], key)
    _assert_same_tree(_tensors(tmp_path / "full" / "clip.safetensors"), _tensors(killed / "clip.safetensors"))
    m_full, m_resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "full", killed))
    assert m_full["epoch_losses"] == m_resumed["epoch_losses"] and m_full["zeroshot"] == m_resumed["zeroshot"]
    files = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(killed)]) == 0
    assert "had already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == files


def test_resuming_the_wrong_folder_is_explained(tiny_world, tmp_path, capsys):
    from progeo.train.run_dir import RunDir

    RunDir(tmp_path / "s2", tensorboard=False).save_config(Stage2Config(out_dir=str(tmp_path / "s2")))
    _fails(capsys, ["train", "stage1", "--resume", str(tmp_path / "s2")],
           rf"--resume {tmp_path / 's2'}: it holds a stage-2 run, not a stage-1 run; resume it with "
           rf"`progeo train stage2 --resume {tmp_path / 's2'}`")
    _fails(capsys, ["pretrain", "--resume", str(tmp_path / "s2")], "holds a stage-2 run, not a pretraining run")
    _fails(capsys, ["train", "stage1", "--resume", str(tmp_path / "nowhere")],
           r"nowhere: the folder does not exist.*give the folder of a stage-1 run")
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["pretrain", "--resume", str(tmp_path / "empty")], "empty: no config.json there")

    # a stage-1 run resumed with another value of a field that decides what is trained
    out = tmp_path / "s1"
    RunDir(out, tensorboard=False).save_config(Stage1Config(train_set=str(tiny_world / "train"), out_dir=str(out),
                                                            groups_num=2, epochs=4))
    _fails(capsys, ["train", "stage1", "--resume", str(out), "--groups-num", "3"],
           rf"--resume {out}: the run was made with groups_num=2 \(now 3\).*drop --groups-num")
    _fails(capsys, ["train", "stage1", "--resume", str(out), "--overwrite"], "contradict each other")
    # a library call with another config fails the same way
    from progeo.train.stage1 import run_stage1

    with pytest.raises(ConfigError, match=r"epochs=4 \(now 480\)"):
        run_stage1(Stage1Config(train_set=str(tiny_world / "train"), resume=str(out), groups_num=2))


def test_a_state_of_another_stage_is_refused(tmp_path):
    from progeo.train.resume import load_training_state, save_training_state

    path = save_training_state(tmp_path / "state.safetensors", "pretrain", epoch=1, model={"w": torch.zeros(2)})
    assert load_training_state(path, "pretrain")["model"]["w"].shape == (2,)
    with pytest.raises(CheckpointError, match="training state of a pretraining run, not of a stage-1 run"):
        load_training_state(path, "stage1")


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tiny_world, tmp_path):
    from progeo.cli import main

    out = tmp_path / "run"
    # stopped after 3 of 5 batches of epoch 0, no checkpoint within epochs
    assert main(_stage1_flags(tiny_world, tmp_path, out) + ["--epochs", "2", "--checkpoint-every", "0",
                                                            "--stop-after", "3"]) == 0
    assert not (out / "checkpoints" / "state.safetensors").exists()
    assert main(["train", "stage1", "--resume", str(out)]) == 0
    assert _final_state(out)["epoch"] == 2 and (out / "prompts.safetensors").is_file()


def test_stage1_and_pretraining_refuse_torchrun(tmp_path, monkeypatch):
    from progeo.config import PretrainConfig
    from progeo.train.pretrain import run_pretrain
    from progeo.train.stage1 import run_stage1

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="stage 1 runs in one process; start it without torchrun"):
        run_stage1(Stage1Config(train_set="x", out_dir=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="pretraining runs in one process; start it without torchrun"):
        run_pretrain(PretrainConfig(world="x", out_dir=str(tmp_path / "b")))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_default_groups_of_stage1_chain_into_stage2(tiny_world, tmp_path):
    """Stage 1 and stage 2 with their default groups (8) on the tiny world: stage 2 finds prompts for every group."""
    from progeo.train.stage1 import run_stage1
    from progeo.train.stage2 import run_stage2

    common = dict(train_set=str(tiny_world / "train"), model=ModelConfig("tiny-vit"), device="cpu", progress=False,
                  tensorboard=False, groups_cache_dir=str(tmp_path / "groups"))
    s1_cfg = Stage1Config(out_dir=str(tmp_path / "s1"), epochs=8, batch_size=64, image_size=None,
                          feature_cache_dir=str(tmp_path / "features"), **common)
    s1 = run_stage1(s1_cfg)
    assert len(s1.classes_per_group) == Stage1Config().groups_num == Stage2Config().groups_num == 8
    s2 = run_stage2(Stage2Config(out_dir=str(tmp_path / "s2"), val_set=str(tiny_world / "val"),
                                 prompts=str(s1.prompts_path), image_size=64, epochs=1, iterations_per_epoch=2,
                                 batch_size=8, freeze_trans=2, **common))
    assert s2.epochs_done == 1 and len(s2.classifiers) == 8 and "train_text" in s2.val_history[0]
