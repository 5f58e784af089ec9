"""Freezing as in the paper's stage 2 (SPEC 1.5): exactly which parameters train."""

from __future__ import annotations

import pytest
import torch

from progeo.errors import ConfigError
from progeo.models.backbones import load_clip
from progeo.models.geolocalizer import GeoLocalizer

BOTTLENECK_WITH_DOWNSAMPLE = ["conv1.weight", "bn1.weight", "bn1.bias", "conv2.weight", "bn2.weight", "bn2.bias",
                              "conv3.weight", "bn3.weight", "bn3.bias", "downsample.0.weight", "downsample.1.weight",
                              "downsample.1.bias"]
VIT_BLOCK = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
             "mlp.c_proj.bias"]
GEM_HEAD = ["aggregation.1.p", "aggregation.3.weight", "aggregation.3.bias"]


def _layer(i: int) -> list[str]:
    return [f"backbone.layer{i}.0.{n}" for n in BOTTLENECK_WITH_DOWNSAMPLE]  # tiny-rn: one block per stage


def _block(i: int) -> list[str]:
    return [f"backbone.transformer.resblocks.{i}.{n}" for n in VIT_BLOCK]


@pytest.fixture(scope="module")
def rn_model():
    return GeoLocalizer.from_clip(load_clip("tiny-rn"))


@pytest.fixture(scope="module")
def vit_model():
    return GeoLocalizer.from_clip(load_clip("tiny-vit"))


def test_resnet_default_trains_layer3_layer4_and_head(rn_model):
    assert rn_model.freeze() == _layer(3) + _layer(4) + GEM_HEAD


@pytest.mark.parametrize("freeze_cnn, trained_layers", [(0, [1, 2, 3, 4]), (1, [2, 3, 4]), (3, [4]), (4, [])])
def test_resnet_freeze_cnn_levels(rn_model, freeze_cnn, trained_layers):
    expected = [n for i in trained_layers for n in _layer(i)] + GEM_HEAD
    assert rn_model.freeze(freeze_cnn=freeze_cnn) == expected


def test_vit_default_freezes_embeddings_ln_pre_and_six_blocks(vit_model):
    expected = _block(6) + _block(7) + ["backbone.ln_post.weight", "backbone.ln_post.bias", "backbone.proj"]
    assert sorted(vit_model.freeze()) == sorted(expected)


def test_vit_freeze_trans_and_authors_embeddings_variant(vit_model):
    names = vit_model.freeze(freeze_trans=7, freeze_embeddings=False)
    assert sorted(names) == sorted(["backbone.class_embedding", "backbone.positional_embedding", *_block(7),
                                    "backbone.ln_post.weight", "backbone.ln_post.bias", "backbone.proj"])
    assert sorted(vit_model.freeze(freeze_trans=8)) == ["backbone.ln_post.bias", "backbone.ln_post.weight", "backbone.proj"]


@pytest.mark.parametrize("fixture", ["rn_model", "vit_model"])
def test_train_all_layers_trains_everything(request, fixture):
    model = request.getfixturevalue(fixture)
    assert model.freeze(train_all_layers=True) == [n for n, _ in model.named_parameters()]


def test_invalid_freeze_levels_are_config_errors(rn_model, vit_model):
    with pytest.raises(ConfigError, match="freeze_cnn=5 must be between 0 and 4"):
        rn_model.freeze(freeze_cnn=5)
    with pytest.raises(ConfigError, match="freeze_trans=9 must be between 0 and 8"):
        vit_model.freeze(freeze_trans=9)


def test_frozen_parameters_get_no_gradient(rn_model):
    model = rn_model
    trainable = set(model.freeze())
    model.train()
    model(torch.randn(4, 3, 64, 64)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    model.zero_grad(set_to_none=True)
