"""Stage 1 on the tiny synthetic world: prompts learned, loss decreasing, feature cache reuse."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from progeo.config import ModelConfig, PromptOptimSettings, Stage1Config
from progeo.errors import ConfigError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tiny_world, tmp_path, **kw) -> Stage1Config:
    base = dict(train_set=str(tiny_world / "train"), model=ModelConfig("tiny-vit"), out_dir=str(tmp_path / "stage1"),
                image_size=None, epochs=12, batch_size=64, groups_num=2, device="cpu", progress=False,
                tensorboard=False, feature_cache_dir=str(tmp_path / "features"), groups_cache_dir=str(tmp_path / "groups"))
    base.update(kw)
    return Stage1Config(**base)


def test_stage1_learns_prompts_for_each_group(tiny_world, tmp_path):
    from progeo.models.backbones import load_clip
    from progeo.models.prompts import load_prompts
    from progeo.models.text_encoder import ClipTextEncoder
    from progeo.train.stage1 import run_stage1

    cfg = _cfg(tiny_world, tmp_path)
    result = run_stage1(cfg)
    losses = result.epoch_losses
    assert len(losses) == cfg.epochs and all(np.isfinite(losses))
    # epochs alternate between the two groups: compare each group's first and last epoch
    assert losses[-2] < losses[0] and losses[-1] < losses[1]
    encoder = ClipTextEncoder.from_clip(load_clip("tiny-vit"))
    learners, info = load_prompts(result.prompts_path, encoder, architecture="tiny-vit")
    assert [pl.n_classes for pl in learners] == result.classes_per_group and len(learners) == 2
    assert info.template == cfg.template and info.extra["provenance"]["epochs"] == cfg.epochs
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["final_loss"] == pytest.approx(losses[-1]) and metrics["feature_cache_hit"] is False
    rows = (result.run_dir / "epochs.csv").read_text().strip().splitlines()
    assert rows[0].split(",")[:3] == ["epoch", "group", "loss"] and len(rows) == cfg.epochs + 1
    again = run_stage1(_cfg(tiny_world, tmp_path, out_dir=str(tmp_path / "again"), epochs=2))
    assert again.cache_hit and again.feature_cache == result.feature_cache


def test_feature_cache_hit_and_miss(tiny_world, tmp_path):
    from progeo.data.image_lists import read_image_list
    from progeo.models.backbones import load_clip
    from progeo.train.features import cached_image_features

    torch.manual_seed(0)
    clip = load_clip("tiny-rn")  # a ResNet: its batch-norm buffers (0-d counters too) are hashed
    clip.model.eval()
    paths = list(read_image_list(tiny_world / "train"))[:20]
    kw = dict(cache_dir=tmp_path, batch_size=8, progress=False)
    feats, file, hit = cached_image_features(clip, paths, **kw)
    assert not hit and feats.shape == (20, clip.embed_dim) and feats.dtype == np.float16
    with torch.no_grad():
        from progeo.data.images import decode_image

        x = decode_image(paths[3], 64, "center-crop").float().unsqueeze(0) / 255
        x = (x - torch.tensor(clip.preprocess.mean).view(1, 3, 1, 1)) / torch.tensor(clip.preprocess.std).view(1, 3, 1, 1)
        expected = clip.visual(x)[0].numpy()
    np.testing.assert_allclose(feats[3].astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    again, file2, hit2 = cached_image_features(clip, paths, **kw)
    assert hit2 and file2 == file and np.array_equal(np.asarray(again), np.asarray(feats))
    _, file3, hit3 = cached_image_features(clip, paths[:19] + [paths[-1].replace("train", "train")], **kw)
    assert hit3  # same list, same key
    _, file4, hit4 = cached_image_features(clip, paths[1:], **kw)  # an image removed: other data
    assert not hit4 and file4 != file
    _, file5, hit5 = cached_image_features(clip, paths, image_size=96, **kw)  # another size
    assert not hit5 and file5 not in (file, file4)
    with torch.no_grad():
        clip.visual.conv1.weight.mul_(1.01)  # other weights
    _, file6, hit6 = cached_image_features(clip, paths, **kw)
    assert not hit6 and file6 not in (file, file4, file5)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file may be left behind"


def test_corrupt_cache_is_recomputed(tiny_world, tmp_path):
    from progeo.data.image_lists import read_image_list
    from progeo.models.backbones import load_clip
    from progeo.train.features import cached_image_features

    clip = load_clip("tiny-vit")
    paths = list(read_image_list(tiny_world / "train"))[:6]
    feats, file, _ = cached_image_features(clip, paths, cache_dir=tmp_path, progress=False)
    feats = np.array(feats)  # a copy: the memory map would see the file change
    file.write_bytes(b"garbage")
    again, file2, hit = cached_image_features(clip, paths, cache_dir=tmp_path, progress=False)
    assert not hit and file2 == file and np.array_equal(np.asarray(again), np.asarray(feats))


def test_stage1_needs_a_train_set(tmp_path):
    from progeo.train.stage1 import run_stage1

    with pytest.raises(ConfigError, match="--train-set"):
        run_stage1(Stage1Config(out_dir=str(tmp_path / "x")))


def test_stage1_too_many_groups_is_explained(tiny_world, tmp_path):
    from progeo.train.stage1 import run_stage1

    with pytest.raises(ConfigError, match="lower groups_num"):
        run_stage1(_cfg(tiny_world, tmp_path, groups_num=500))


def _authors_lr(epoch: int, epochs: int, groups: int, lr: float) -> float:
    """The authors' stage-1 LR in closed form: group e % G at its (e // G)-th epoch of a cosine over epochs // G."""
    return 0.5 * lr * (1 + math.cos(math.pi * (epoch // groups) / (epochs // groups)))


@pytest.mark.parametrize("schedule", ["per_group", "global"])
def test_stage1_lr_per_step_follows_a_cosine_per_group(tiny_world, tmp_path, schedule):
    """Every optimizer step's LR, across a stop and a resume, equals the reference (3 groups, 10 epochs:
    group 0 trains one epoch more than the others and its last one at LR 0, as the authors' scheduler does)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from progeo.train.stage1 import run_stage1

    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    epochs, groups, lr = 10, 3, 0.01
    kw = dict(epochs=epochs, groups_num=groups, checkpoint_every=1,
              optim=PromptOptimSettings(lr=lr, lr_schedule=schedule))
    try:
        stopped = run_stage1(_cfg(tiny_world, tmp_path, stop_after=7, **kw))
        assert stopped.stopped
        resumed = run_stage1(_cfg(tiny_world, tmp_path, resume=str(stopped.run_dir), **kw))
    finally:
        handle.remove()
    assert len(resumed.epoch_losses) == epochs
    with open(resumed.run_dir / "epochs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = len(seen) // epochs
    assert len(seen) == steps * epochs  # the groups have the same number of batches here
    if schedule == "per_group":
        expected = [_authors_lr(e, epochs, groups, lr) for e in range(epochs)]
        # the same values from torch's CosineAnnealingLR, one per group, stepped after each of its epochs
        optimizers = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr) for _ in range(groups)]
        schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs // groups) for o in optimizers]
        for e in range(epochs):
            assert schedulers[e % groups].get_last_lr()[0] == pytest.approx(expected[e], rel=1e-12, abs=1e-15)
            optimizers[e % groups].step()
            schedulers[e % groups].step()
        assert expected[0] == expected[1] == expected[2] == lr and expected[9] == 0.0
    else:
        expected = [0.5 * lr * (1 + math.cos(math.pi * e / epochs)) for e in range(epochs)]
    assert seen == pytest.approx([v for v in expected for _ in range(steps)], rel=1e-12, abs=1e-15)
    assert [float(r["lr"]) for r in rows] == pytest.approx(expected, rel=1e-5, abs=1e-12)  # the CSV keeps 6 digits


def test_stage1_lr_schedule_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="lr_schedule='cosine'.*per_group.*global"):
        Stage1Config(train_set=str(tmp_path), optim=PromptOptimSettings(lr_schedule="cosine")).check()
