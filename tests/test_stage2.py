"""Stage 2 on the tiny synthetic world: training, outputs, the CosPlace ablation, NaN handling,
class sampling and the batched augmentations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from progeo.config import LossSettings, ModelConfig, OptimSettings, Stage1Config, Stage2Config
from progeo.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts(tiny_world, tmp_path_factory):
    from progeo.train.stage1 import run_stage1

    tmp = tmp_path_factory.mktemp("stage1")
    cfg = Stage1Config(train_set=str(tiny_world / "train"), model=ModelConfig("tiny-vit"), out_dir=str(tmp / "run"),
                       image_size=None, epochs=4, groups_num=2, device="cpu", progress=False, tensorboard=False,
                       feature_cache_dir=str(tmp / "features"), groups_cache_dir=str(tmp / "groups"))
    return run_stage1(cfg).prompts_path


def _cfg(tiny_world, tmp_path, prompts, **kw) -> Stage2Config:
    base = dict(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), model=ModelConfig("tiny-vit"),
                prompts=str(prompts) if prompts else None, out_dir=str(tmp_path / "stage2"), image_size=64, groups_num=1, epochs=3,
                iterations_per_epoch=6, batch_size=12, optim=OptimSettings(lr=3e-4), freeze_trans=2, device="cpu", progress=False,
                tensorboard=False, groups_cache_dir=str(tmp_path / "groups"))
    base.update(kw)
    return Stage2Config(**base)


def test_stage2_trains_and_writes_a_run_folder(tiny_world, tmp_path, prompts):
    import progeo
    from progeo.train.augment import IMAGENET_MEAN
    from progeo.train.stage2 import run_stage2

    cfg = _cfg(tiny_world, tmp_path, prompts, test_set=str(tiny_world / "test"),
               test_queries=("queries", "queries_night"), tensorboard=True, loss=LossSettings(triplet_weight=0.5))
    result = run_stage2(cfg)
    hist = result.val_history
    assert [h["epoch"] for h in hist] == [0, 1, 2] and not result.stopped
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert {"train_cosface", "train_text", "train_triplet", "val_R@1", "val_R@5"} <= set(hist[0])
    assert result.best_val_r1 == max(h["val_R@1"] for h in hist)
    model = progeo.load_model(result.best_model)
    assert tuple(model.preprocess_config.mean) == IMAGENET_MEAN and model.image_size == (64, 64)
    assert model.describe(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, 64)
    assert progeo.load_model(result.last_model).config.provenance["epoch"] == 2
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"queries", "queries_night"} and 0 <= metrics["test"]["queries"]["R@1"] <= 100
    assert metrics["test"]["queries"] == result.test_recalls["queries"]
    assert json.loads((result.run_dir / "config.json").read_text())["iterations_per_epoch"] == 6
    assert (result.run_dir / "epochs.csv").read_text().count("\n") == 4
    assert any((result.run_dir / "tensorboard").iterdir())
    assert (result.run_dir / "checkpoints" / "state.safetensors").is_file()


def test_no_text_loss_is_plain_cosplace_without_prompts(tiny_world, tmp_path):
    from progeo.train.stage2 import run_stage2

    cfg = _cfg(tiny_world, tmp_path, None, loss=LossSettings(text_loss=False), epochs=1, iterations_per_epoch=3,
               normalization="clip")
    result = run_stage2(cfg)
    assert "train_text" not in result.val_history[0] and "train_cosface" in result.val_history[0]
    assert result.model.preprocess_config.mean != (0.485, 0.456, 0.406)  # the CLIP mean/std kept


def test_text_loss_needs_prompts_and_matching_groups(tiny_world, tmp_path, prompts):
    from progeo.train.stage2 import run_stage2

    with pytest.raises(ConfigError, match="--prompts"):
        run_stage2(_cfg(tiny_world, tmp_path, None))
    with pytest.raises(ConfigError, match=r"prompts .* have 2 group\(s\).*--groups-num"):
        run_stage2(_cfg(tiny_world, tmp_path, prompts, groups_num=3))
    with pytest.raises(ConfigError, match="queries_nope"):
        run_stage2(_cfg(tiny_world, tmp_path, prompts, test_set=str(tiny_world / "test"), test_queries=("queries_nope",)))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_world, tmp_path, prompts, monkeypatch):
    from progeo.train import stage2
    from progeo.train.loop import TrainingDiverged
    from progeo.train.run_dir import load_state

    calls = {"n": 0}
    real = stage2.label_smoothed_cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 4 else loss

    monkeypatch.setattr(stage2, "label_smoothed_cross_entropy", poisoned)
    cfg = _cfg(tiny_world, tmp_path, prompts, checkpoint_every=2, epochs=1)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at stage 2 epoch 0 iteration 3.*kept in .*state"):
        stage2.run_stage2(cfg)
    state = load_state(tmp_path / "stage2" / "checkpoints" / "state.safetensors")
    assert (state["epoch"], state["step"]) == (0, 2)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_class_batches_are_reproducible_and_split_over_ranks(tiny_world, tmp_path):
    from progeo.data.groups import GroupsConfig
    from progeo.data.train_sets import TrainSet
    from progeo.train.class_batches import batch_items
    from progeo.train.ddp import DistInfo, rank_slice

    group = TrainSet.open(tiny_world / "train", GroupsConfig(), cache_dir=tmp_path).group(0)
    n = len(group)
    idx, labels = batch_items(group, seed=1, epoch=0, iteration=0, batch_size=2 * n)
    assert sorted(labels[:n]) == list(range(n)) and sorted(labels[n:]) == list(range(n))  # each class once per cycle
    for i, y in zip(idx, labels):
        assert i in group.image_indices(int(y))
    again = batch_items(group, seed=1, epoch=0, iteration=0, batch_size=2 * n)
    assert np.array_equal(again[0], idx) and np.array_equal(again[1], labels)
    other = batch_items(group, seed=1, epoch=1, iteration=0, batch_size=2 * n)
    assert not np.array_equal(other[0], idx)
    parts = [rank_slice(12, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [(p.start, p.stop) for p in parts] == [(0, 4), (4, 8), (8, 12)]
    with pytest.raises(ConfigError, match="not divisible"):
        rank_slice(10, DistInfo(rank=0, world_size=3))


def test_batched_augmentation_matches_torchvision_per_image():
    from torchvision.transforms.v2 import functional as TF

    from progeo.train.augment import AugmentConfig, augment_batch, color_jitter, crop_resize, sample_params

    x = torch.rand(3, 3, 20, 24)
    params = {"brightness": torch.tensor([0.5, 1.2, 1.0]), "contrast": torch.tensor([1.5, 0.3, 1.0]),
              "saturation": torch.tensor([0.2, 1.7, 1.0]), "hue": torch.tensor([0.1, -0.4, 0.5])}
    ours = color_jitter(x, params)
    for i in range(3):
        ref = x[i]
        ref = TF.adjust_brightness(ref, float(params["brightness"][i]))
        ref = TF.adjust_contrast(ref, float(params["contrast"][i]))
        ref = TF.adjust_saturation(ref, float(params["saturation"][i]))
        ref = TF.adjust_hue(ref, float(params["hue"][i]))
        torch.testing.assert_close(ours[i], ref, atol=2e-4, rtol=0)
    box = torch.tensor([[0.0, 0.0, 24.0, 20.0], [4.0, 6.0, 12.0, 10.0], [2.0, 2.0, 10.0, 10.0]])
    crops = crop_resize(x, box, (10, 12))
    torch.testing.assert_close(crops[1], x[1, :, 6:16, 4:16], atol=1e-5, rtol=0)
    cfg = AugmentConfig(out_size=(16, 16))
    p = sample_params(cfg, 500, (20, 24), torch.Generator().manual_seed(0))
    area = p["box"][:, 2] * p["box"][:, 3] / (20 * 24)
    assert (p["box"][:, 0] + p["box"][:, 2] <= 24).all() and (p["box"][:, 1] + p["box"][:, 3] <= 20).all()
    assert area.min() >= 0.45 and area.max() <= 1.0
    assert p["hue"].abs().max() <= 0.5 and p["brightness"].min() >= 0.3 and p["brightness"].max() <= 1.7
    out = augment_batch((x * 255).to(torch.uint8), cfg, sample_params(cfg, 3, (20, 24), torch.Generator().manual_seed(1)))
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32


def test_text_features_are_the_learned_prompts_in_the_cosface_label_order(tiny_world, pretrained_tiny_clip, tmp_path):
    """The text loss compares descriptor i with the text feature of class ``labels[i]`` of the current
    group: row c of stage 2's text features must be group g's stage-1 prompt of class c, and the labels
    stage 2's batches carry must be the ones stage 1 learned those prompts with (any mismatch makes the
    text loss noise). Checked directly: the frozen CLIP features of a stage-2 batch's images are
    classified by the text features far above chance, and not once the class order is rolled."""
    from progeo.models.prompts import load_prompts
    from progeo.models.text_encoder import ClipTextEncoder
    from progeo.train.class_batches import batch_items
    from progeo.train.ddp import DistInfo
    from progeo.train.stage1 import group_features, load_frozen_clip, run_stage1
    from progeo.train.stage2_setup import build_parts

    weights, backbone = pretrained_tiny_clip
    model = dict(model=ModelConfig(backbone, str(weights)), groups_cache_dir=str(tmp_path / "groups"))
    s1_cfg = Stage1Config(train_set=str(tiny_world / "train"), out_dir=str(tmp_path / "stage1"), image_size=None,
                          epochs=24, batch_size=64, groups_num=2, device="cpu", progress=False, tensorboard=False,
                          feature_cache_dir=str(tmp_path / "features"), **model)
    s1 = run_stage1(s1_cfg)
    parts = build_parts(_cfg(tiny_world, tmp_path, s1.prompts_path, groups_num=2, **model), torch.device("cpu"),
                        DistInfo())
    clip = load_frozen_clip(s1_cfg, torch.device("cpu"))
    encoder = ClipTextEncoder.from_clip(clip).eval()
    learners, _ = load_prompts(s1.prompts_path, encoder)
    feats, per_group, _, hit = group_features(clip, parts.groups, s1_cfg, torch.device("cpu"))
    assert hit  # the features stage 1 learned the prompts on
    row_of = {int(i): r for r, i in enumerate(np.concatenate([g.all_images()[0] for g in parts.groups]))}
    accuracy, rolled = [], []
    for g, group in enumerate(parts.groups):
        n = len(group)
        with torch.no_grad():
            expected = learners[g].text_features(encoder, torch.arange(n)).float()
        torch.testing.assert_close(parts.text_features[g], expected, rtol=1e-4, atol=1e-4)
        images, labels = batch_items(group, seed=0, epoch=g, iteration=0, batch_size=12 * n)  # a stage-2 batch
        x = torch.from_numpy(np.array(feats[[row_of[int(i)] for i in images]])).float()
        y = torch.from_numpy(labels)
        accuracy.append(float(((x @ parts.text_features[g].t()).argmax(1) == y).float().mean()) * n)
        rolled.append(float(((x @ parts.text_features[g].roll(1, 0).t()).argmax(1) == y).float().mean()) * n)
    # accuracies in units of chance (1 / n): learned prompts in the right order are far above it
    assert min(accuracy) >= 1.5 and np.mean(accuracy) > np.mean(rolled) + 0.75, (accuracy, rolled)
