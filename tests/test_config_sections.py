"""Nested training configs (groups, augment, eval sections): every flag and flat config key of before
the sections still sets the same setting, sections are accepted in config files, a misplaced key is
named, and a run whose config.json was written flat (before the sections) still resumes."""

from __future__ import annotations

import json
import types
import typing

import pytest
import torch
import yaml

from progeo.cli import build_parser
from progeo.cli.train import config_from_args, run_config
from progeo.config import (AugmentSettings, EvalSettings, GroupsConfig, LossSettings, ModelConfig, OptimSettings,
                           PretrainConfig, PromptOptimSettings, Stage1Config, Stage2Config)
from progeo.config_files import config_fields, config_to_dict, flat_config, load_config, save_config
from progeo.errors import CheckpointError, ConfigError
from progeo.train.engine import run_training
from progeo.train.resume import check_same_run, read_run_config

# the flat fields (flags --name, config-file keys) of the configs before the sections, in their order
_RUN = ("out_dir device seed amp num_workers progress tensorboard threads checkpoint_every resume overwrite "
        "stop_after ")
OLD_NAMES = {
    PretrainConfig: _RUN + "world backbone image_size epochs batch_size lr weight_decay warmup_steps init_temperature "
                           "augment max_images eval_batch_size zeroshot_template",
    Stage1Config: _RUN + "backbone weights quick_gelu M alpha N L min_images_per_class groups_cache_dir train_set "
                         "groups_num epochs batch_size lr lr_schedule weight_decay template temperature "
                         "normalize_features image_size feature_cache_dir feature_batch_size",
    Stage2Config: _RUN + "backbone weights quick_gelu M alpha N L min_images_per_class groups_cache_dir train_set "
                         "val_set test_set val_queries test_queries prompts fc_output_dim image_size freeze_cnn "
                         "freeze_trans train_all_layers groups_num epochs iterations_per_epoch batch_size lr "
                         "classifiers_lr preload_images preload_max_gib cosface_s cosface_m text_loss text_loss_weight "
                         "label_smoothing triplet_weight triplet_mining brightness contrast saturation hue crop_scale "
                         "normalization eval_batch_size recall_values positive_dist",
}
COMMAND = {PretrainConfig: ["pretrain"], Stage1Config: ["train", "stage1"], Stage2Config: ["train", "stage2"]}
CHOICES = {"lr_schedule": "global", "normalization": "clip", "triplet_mining": "all",
           "template": "A photo of X X street.", "zeroshot_template": "{city} street"}


def _other_value(name: str, tp, default):
    """A valid value of setting ``name`` other than its default."""
    if name in CHOICES:
        return CHOICES[name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if tp is bool:
        return not default
    if tp is int:
        return (default or 1) + 1
    if tp is float:
        return (default or 0.2) / 2
    if tp is str:
        return "some/where"
    return {int: (1, 3), str: ("queries", "queries_night"), float: (0.4, 0.9)}[args[0]]


def _flag_args(name: str, value) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    return [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]


@pytest.mark.parametrize("cls", [PretrainConfig, Stage1Config, Stage2Config])
def test_every_old_flag_and_flat_key_sets_the_same_setting(cls, tmp_path):
    assert sorted(config_fields(cls)) == sorted(OLD_NAMES[cls].split())
    defaults = flat_config(cls())
    for name, tp in config_fields(cls).items():
        value = _other_value(name, tp, defaults[name])
        assert value != defaults[name], name
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({name: list(value) if isinstance(value, tuple) else value}))
        from_file = load_config(cls, path)
        from_flag = config_from_args(cls, build_parser().parse_args(COMMAND[cls] + _flag_args(name, value)))
        assert flat_config(from_file)[name] == flat_config(from_flag)[name] == value, name
        assert from_file == from_flag, name  # and nothing else changed
        assert {k: v for k, v in flat_config(from_file).items() if k != name} == {
            k: v for k, v in defaults.items() if k != name}, name


def test_flat_keys_land_in_their_sections_and_sections_are_accepted(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("backbone: tiny-vit\nM: 20\nmin_images_per_class: 3\nhue: 0.1\ncrop_scale: [0.3, 0.9]\neval_batch_size: 16\n"
                    "recall_values: [1, 2]\npositive_dist: 10\nlr: 2.0e-5\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("model: {backbone: tiny-vit}\ngroups: {M: 20, min_images_per_class: 3}\naugment: {hue: 0.1, crop-scale: [0.3, 0.9]}\n"
                      "eval: {batch_size: 16, recall_values: [1, 2], positive_dist: 10}\nlr: 2.0e-5\n")
    cfg = load_config(Stage2Config, flat)
    assert cfg == load_config(Stage2Config, nested)
    assert cfg.groups == GroupsConfig(M=20, min_images_per_class=3) and cfg.model == ModelConfig("tiny-vit")
    assert cfg.augment == AugmentSettings(hue=0.1, crop_scale=(0.3, 0.9))
    assert cfg.eval == EvalSettings(batch_size=16, recall_values=(1, 2), positive_dist=10.0)
    # a flag overrides one setting of a section read from a file, the others stay
    args = build_parser().parse_args(["train", "stage2", "--config", str(nested), "--N", "3", "--eval-batch-size", "8"])
    over = config_from_args(Stage2Config, args)
    assert (over.groups.M, over.groups.N, over.eval.batch_size, over.eval.positive_dist) == (20, 3, 8, 10.0)
    # config.json is written in sections and read back
    saved = save_config(cfg, tmp_path / "config.json")
    assert json.loads(saved.read_text())["groups"]["M"] == 20
    assert load_config(Stage2Config, saved) == cfg


@pytest.mark.parametrize("text, match", [
    ("augment:\n  M: 20\n", r"'augment\.M' in config file .*c\.yaml is misplaced; write it as M"),
    ("eval:\n  hue: 0.1\n", r"'eval\.hue' .* misplaced; write it as hue"),
    ("groups:\n  Mm: 20\n", r"unknown option 'groups\.Mm' in config file .*did you mean groups\.M"),
    ("eval:\n  batch_sise: 8\n", r"unknown option 'eval\.batch_sise'.*did you mean eval\.batch_size"),
    ("eval_batch_sise: 8\n", r"unknown option 'eval_batch_sise'.*did you mean eval_batch_size"),
    ("groups:\n  M: 0\n", r"GroupsConfig\.M must be a positive integer"),
])
def test_a_misplaced_or_unknown_key_in_a_section_is_named(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(Stage2Config, path)


def test_a_run_with_a_flat_config_json_of_before_the_sections_still_resumes(tmp_path):
    from test_engine import Toy, _cfg

    w_full, losses_full, _ = run_training(Toy, _cfg(tmp_path / "full"))
    killed = tmp_path / "killed"
    assert run_training(Toy, _cfg(killed, stop_after=8))[2]
    flat = json.loads(json.dumps(flat_config(load_config(Stage1Config, killed / "config.json"))))
    assert "groups" in json.loads((killed / "config.json").read_text()) and "M" in flat
    (killed / "config.json").write_text(json.dumps(flat))  # as a run of before the sections wrote it

    assert read_run_config(killed, "stage1") == flat
    with pytest.raises(CheckpointError, match=r"it holds a stage-1 run, not a stage-2 run"):
        read_run_config(killed, "stage2")
    with pytest.raises(ConfigError, match=r"made with M=10 \(now 20\)"):
        check_same_run(_cfg(killed, groups=GroupsConfig(M=20)), flat, killed, "stage1")
    cfg = run_config(Stage1Config, build_parser().parse_args(["train", "stage1", "--resume", str(killed)]), "stage1")
    w, losses, stopped = run_training(Toy, cfg)
    assert not stopped and torch.equal(w, w_full) and losses == losses_full


def test_config_to_dict_is_nested_and_field_help_reaches_into_sections():
    from progeo.config_files import field_help

    d = config_to_dict(Stage2Config())
    assert d["eval"] == {"batch_size": 64, "recall_values": [1, 5, 10, 20], "positive_dist": 25.0}
    assert field_help(Stage2Config, "eval_batch_size").endswith("(default: 64)")
    assert field_help(Stage2Config, "M").endswith("(default: 10, the paper's value)")


@pytest.mark.parametrize("command", [["check-dataset", "DATA"], ["import-prompts", "SRC", "--out", "OUT"]])
def test_commands_outside_training_take_the_partition_flags_of_the_groups_section(command):
    from progeo.cli.train import groups_from_args

    assert groups_from_args(build_parser().parse_args(command)) == GroupsConfig()
    args = build_parser().parse_args(command + ["--M", "20", "--min-images-per-class", "3"])
    assert groups_from_args(args) == GroupsConfig(M=20, min_images_per_class=3)


def test_a_bad_value_in_a_section_is_named_by_its_flag():
    with pytest.raises(ConfigError, match=r"eval_batch_size=0 must be > 0"):
        load_config(Stage2Config, overrides={"eval_batch_size": 0})
    with pytest.raises(ConfigError, match=r"hue=0\.9 must lie in \[0, 0\.5\]"):
        load_config(Stage2Config, overrides={"augment": {"hue": 0.9}})


def test_optimiser_and_loss_settings_are_sections_set_by_their_flat_names(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 2.0e-5\nclassifiers_lr: 0.02\ncosface_s: 20\ntext_loss: false\ntriplet_weight: 0.5\n"
                    "triplet_mining: all\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim: {lr: 2.0e-5, classifiers-lr: 0.02}\n"
                      "loss: {cosface_s: 20, text_loss: false, triplet_weight: 0.5, triplet_mining: all}\n")
    cfg = load_config(Stage2Config, flat)
    assert cfg == load_config(Stage2Config, nested)
    assert cfg.optim == OptimSettings(lr=2e-5, classifiers_lr=0.02)
    assert cfg.loss == LossSettings(cosface_s=20.0, text_loss=False, triplet_weight=0.5, triplet_mining="all")
    assert json.loads(save_config(cfg, tmp_path / "config.json").read_text())["loss"]["cosface_s"] == 20.0
    args = build_parser().parse_args(["train", "stage1", "--lr", "0.5", "--lr-schedule", "global",
                                      "--weight-decay", "0.1"])
    assert config_from_args(Stage1Config, args).optim == PromptOptimSettings(0.5, "global", 0.1)
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'loss\.lr' .* misplaced; write it as lr"):
        load_config(Stage2Config, path)
    with pytest.raises(ConfigError, match=r"label_smoothing=1\.0 must lie in \[0, 1\)"):
        load_config(Stage2Config, overrides={"label_smoothing": 1.0})
    with pytest.raises(ConfigError, match=r"classifiers_lr=0\.0 must be > 0"):
        load_config(Stage2Config, overrides={"optim": {"classifiers_lr": 0}})
