"""Training configs: paper defaults, YAML/JSON files, command-line overrides, clear errors."""

from __future__ import annotations

import json

import pytest

from progeo.config import ModelConfig, PretrainConfig, Stage1Config, Stage2Config
from progeo.config_files import config_to_dict, load_config, save_config
from progeo.errors import ConfigError


def test_paper_defaults():
    s1, s2 = Stage1Config(), Stage2Config()
    assert (s1.optim.lr, s1.batch_size, s1.epochs, s1.temperature) == (0.01, 512, 480, 1.0)
    # stage 1 learns prompts for the groups stage 2 trains (8; the authors' README runs stage 1 with 1)
    assert s1.groups_num == s2.groups_num == 8
    assert s1.template == "A photo of a X X X X street."
    assert (s2.optim.lr, s2.optim.classifiers_lr, s2.batch_size, s2.epochs, s2.iterations_per_epoch) == (
        1e-5, 0.01, 32, 64, 10_000)
    lo = s2.loss
    assert (lo.cosface_s, lo.cosface_m, lo.label_smoothing, lo.triplet_weight, s2.groups_num, s2.image_size) == (
        30.0, 0.4, 0.1, 0.0, 8, 512)
    assert (s2.freeze_cnn, s2.freeze_trans, s2.train_all_layers) == (2, 6, False)
    a, g = s2.augment, s2.groups
    assert (a.brightness, a.contrast, a.saturation, a.hue, a.crop_scale) == (0.7, 0.7, 0.7, 0.5, (0.5, 1.0))
    assert (g.M, g.alpha, g.N, g.L, g.min_images_per_class) == (10, 30, 5, 2, 10)
    assert (s2.eval.batch_size, s2.eval.recall_values, s2.eval.positive_dist) == (64, (1, 5, 10, 20), 25.0)


def test_yaml_file_then_flags_override(tmp_path):
    path = tmp_path / "s2.yaml"
    path.write_text("epochs: 3\niterations_per_epoch: 20\ncrop_scale: [0.3, 0.9]\ntext_loss: false\n"
                    "test_queries: [queries_night, queries_occlusion]\nlr: 2.0e-5\n")
    cfg = load_config(Stage2Config, path)
    assert (cfg.epochs, cfg.iterations_per_epoch, cfg.augment.crop_scale, cfg.loss.text_loss) == (3, 20, (0.3, 0.9), False)
    assert cfg.test_queries == ("queries_night", "queries_occlusion") and cfg.optim.lr == 2e-5
    cfg = load_config(Stage2Config, path, overrides={"epochs": 5, "batch-size": "16"})
    assert (cfg.epochs, cfg.batch_size, cfg.iterations_per_epoch) == (5, 16, 20)  # file value kept


def test_json_file_round_trip(tmp_path):
    cfg = Stage1Config(train_set="/data/train", model=ModelConfig("tiny-vit"), epochs=7, image_size=None)
    path = save_config(cfg, tmp_path / "config.json")
    assert json.loads(path.read_text())["epochs"] == 7
    assert load_config(Stage1Config, path) == cfg
    assert config_to_dict(Stage2Config())["augment"]["crop_scale"] == [0.5, 1.0]


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"'learning_rate'.*bad\.yaml"):
        load_config(Stage1Config, path)
    with pytest.raises(ConfigError, match=r"'epoch'.*command line.*did you mean epochs"):
        load_config(Stage2Config, overrides={"epoch": 1})


@pytest.mark.parametrize("text, match", [
    ("epochs: three\n", r"epochs in config file .* must be an integer, got 'three'"),
    ("amp: maybe\n", r"amp .* must be true or false"),
    ("crop_scale: [0.5]\n", r"crop_scale .* needs 2 values"),
    ("- 1\n- 2\n", r"must hold a mapping"),
    ("epochs: [1\n", r"not valid YAML"),
])
def test_bad_values_are_named(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(Stage2Config, path)


@pytest.mark.parametrize("cls, overrides, match", [
    (Stage2Config, {"hue": 0.7}, "hue=0.7"),
    (Stage2Config, {"crop_scale": [0.9, 0.5]}, "crop_scale"),
    (Stage2Config, {"normalization": "model"}, "normalization"),
    (Stage2Config, {"batch_size": 0}, "batch_size=0 must be > 0"),
    (Stage1Config, {"M": 0}, "GroupsConfig.M"),
    (PretrainConfig, {"init_temperature": 2.0}, "init_temperature"),
])
def test_invalid_values_rejected(cls, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(cls, overrides=overrides)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Stage1Config, tmp_path / "nope.yaml")


def test_command_line_flags_become_the_config(tmp_path):
    from progeo.cli import build_parser
    from progeo.cli.train import config_from_args

    path = tmp_path / "s2.yaml"
    path.write_text("epochs: 3\nbatch_size: 16\nfc_output_dim: 128\n")
    args = build_parser().parse_args(["train", "stage2", "--config", str(path), "--no-text-loss", "--batch-size", "8",
                                      "--crop-scale", "0.6", "1.0", "--fc-output-dim", "none", "--test-queries",
                                      "queries", "queries_night"])
    cfg = config_from_args(Stage2Config, args)
    assert (cfg.epochs, cfg.batch_size, cfg.loss.text_loss, cfg.augment.crop_scale, cfg.fc_output_dim) == (3, 8, False, (0.6, 1.0), None)
    assert cfg.test_queries == ("queries", "queries_night") and cfg.optim.lr == 1e-5  # untouched: the paper's
    args = build_parser().parse_args(["train", "stage1", "--epochs", "5", "--image-size", "64"])
    assert config_from_args(Stage1Config, args).epochs == 5
    args = build_parser().parse_args(["pretrain", "--world", "W", "--no-augment"])
    assert config_from_args(PretrainConfig, args).augment is False
