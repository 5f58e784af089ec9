"""Pretraining a tiny CLIP on the tiny world's captions lifts zero-shot city accuracy above chance."""

from __future__ import annotations

import json

import pytest
import torch

from progeo.config import PretrainConfig
from progeo.errors import DatasetError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_pretraining_beats_chance_and_saves_loadable_weights(tiny_world, tmp_path):
    from progeo.models.backbones import load_clip
    from progeo.train.pretrain import run_pretrain

    cfg = PretrainConfig(world=str(tiny_world), backbone="tiny-rn", out_dir=str(tmp_path / "pretrain"), epochs=3,
                         batch_size=64, lr=3e-3, device="cpu", progress=False, tensorboard=False)
    result = run_pretrain(cfg)
    assert result.chance == pytest.approx(100 / 3)  # the tiny world has 3 cities
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.zeroshot_accuracy > result.chance + 10, result
    assert result.zeroshot_accuracy > result.zeroshot_before
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["zeroshot"]["after"] == pytest.approx(result.zeroshot_accuracy)
    assert set(metrics["zeroshot"]["per_folder"]) >= {"val", "test/queries", "test/queries_night"}
    clip = load_clip("tiny-rn", weights=result.checkpoint)  # the format stage 1/2 and GEM load
    from safetensors.torch import load_file

    saved = load_file(result.checkpoint)
    for name, tensor in clip.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_pretraining_needs_captions(tmp_path):
    from progeo.train.pretrain import run_pretrain

    (tmp_path / "world").mkdir()
    with pytest.raises(DatasetError, match=r"captions\.tsv does not exist.*progeo synth"):
        run_pretrain(PretrainConfig(world=str(tmp_path / "world"), out_dir=str(tmp_path / "run"), progress=False))
    (tmp_path / "world" / "captions.tsv").write_text("train/a.jpg no tab here\n")
    with pytest.raises(DatasetError, match=r"line 1: expected 'path<TAB>caption'"):
        run_pretrain(PretrainConfig(world=str(tmp_path / "world"), out_dir=str(tmp_path / "run"), progress=False))
