"""Descriptor heads against their formulas, and the GeoLocalizer.describe contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from progeo.errors import ConfigError
from progeo.models.backbones import load_clip
from progeo.models.geolocalizer import GeoLocalizer
from progeo.models.heads import ClipEmbeddingHead, GeM, GeMHead, L2Norm


@pytest.fixture(scope="module")
def rn_model():
    torch.manual_seed(0)
    return GeoLocalizer.from_clip(load_clip("tiny-rn"))


@pytest.fixture(scope="module")
def vit_model():
    torch.manual_seed(0)
    return GeoLocalizer.from_clip(load_clip("tiny-vit"))


def test_l2norm_matches_formula():
    x = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    expected = x / torch.sqrt((x ** 2).sum(dim=1, keepdim=True))
    torch.testing.assert_close(L2Norm(dim=1)(x), expected)
    assert torch.equal(L2Norm(dim=1)(torch.zeros(2, 3)), torch.zeros(2, 3))  # no NaN on zero vectors


def test_gem_matches_formula_and_p_is_learnable():
    x = torch.rand(2, 5, 4, 3, dtype=torch.float64) - 0.2  # some negatives: clamped to eps
    gem = GeM()
    assert float(gem.p) == 3.0 and gem.p.requires_grad
    arr = np.clip(x.numpy(), 1e-6, None)
    expected = np.mean(arr ** 3, axis=(2, 3), keepdims=True) ** (1 / 3)
    np.testing.assert_allclose(gem(x).detach().numpy(), expected, rtol=1e-6)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0
    gem_p1 = GeM(p=1.0, learnable=False)
    np.testing.assert_allclose(gem_p1(x).numpy(), arr.mean(axis=(2, 3), keepdims=True), rtol=1e-6)
    assert not list(gem_p1.parameters())


def test_gem_head_pipeline_and_cosplace_key_names():
    torch.manual_seed(0)
    head = GeMHead(features_dim=8, fc_output_dim=5)
    assert list(head.state_dict()) == ["1.p", "3.weight", "3.bias"]
    fmap = torch.randn(3, 8, 4, 4)
    normed = fmap / fmap.norm(dim=1, keepdim=True)
    pooled = normed.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    lin = pooled @ head[3].weight.T + head[3].bias
    expected = lin / lin.norm(dim=1, keepdim=True)
    out = head(fmap)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_clip_embedding_head():
    x = torch.randn(4, 7)
    assert torch.equal(ClipEmbeddingHead()(x), x)
    torch.testing.assert_close(ClipEmbeddingHead(normalize=True)(x), x / x.norm(dim=1, keepdim=True))


def test_model_contract_attributes(rn_model, vit_model):
    assert rn_model.descriptor_dim == 64 and rn_model.config.head == "gem"
    assert vit_model.descriptor_dim == 64 and vit_model.config.head == "clip"
    pre = rn_model.preprocess_config
    assert pre.image_size == (64, 64) and len(pre.mean) == 3 and len(pre.std) == 3
    assert pre.interpolation == "bicubic" and pre.resize_mode == "shortest"
    assert not any(k.startswith("backbone.attnpool") for k in rn_model.state_dict())


@pytest.mark.parametrize("fixture", ["rn_model", "vit_model"])
def test_describe_accepts_uint8_and_float_layouts(request, fixture):
    model = request.getfixturevalue(fixture)
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)
    nchw = torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous()
    mean = torch.tensor(model.preprocess_config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess_config.std).view(1, 3, 1, 1)
    unit = nchw.float() / 255
    a = model.describe(nhwc)
    assert a.dtype == np.float32 and a.shape == (5, 64)
    np.testing.assert_allclose(model.describe(nchw, device="cpu"), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.describe((unit - mean) / std), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.describe(unit, normalized=False), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.describe(nchw, batch_size=2), a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.describe(nchw[0]), a[:1], rtol=1e-5, atol=1e-5)
    assert model.describe(nchw[:0]).shape == (0, 64)
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()((unit - mean) / std).numpy(), a, rtol=1e-5, atol=1e-6)


def test_describe_channels_last_gives_the_same_descriptors(rn_model):
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    a = rn_model.describe(x, channels_last=False)
    b = rn_model.describe(x, channels_last=True)
    assert rn_model.backbone.conv1.weight.is_contiguous()  # the layout is restored after the call
    with rn_model.inference(channels_last=True):  # ... and kept for a block of calls
        assert rn_model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        np.testing.assert_allclose(rn_model.describe(x, channels_last=True), b, rtol=1e-5, atol=1e-6)
    assert rn_model.backbone.conv1.weight.is_contiguous()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_model_still_trains_after_describe(rn_model):
    rn_model.describe(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    rn_model.train()
    rn_model(torch.randn(2, 3, 64, 64)).sum().backward()  # no inference tensors left in the parameters
    assert rn_model.aggregation[3].weight.grad is not None
    rn_model.zero_grad(set_to_none=True)


def test_describe_input_errors(rn_model, vit_model):
    with pytest.raises(ConfigError, match="3 channels"):
        rn_model.describe(torch.zeros(2, 4, 64, 64, dtype=torch.uint8))
    with pytest.raises(ConfigError, match=r"B x 3 x H x W or B x H x W x 3"):
        rn_model.describe(torch.zeros(64, 64, dtype=torch.uint8))
    with pytest.raises(ConfigError, match=r"tensor or numpy array"):
        rn_model.describe([[1, 2, 3]])
    with pytest.raises(ConfigError, match=r"expects 64x64 images \(see model.preprocess_config\), got 96x96"):
        vit_model.describe(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="feature_map is defined for ResNet"):
        vit_model.feature_map(torch.zeros(1, 3, 64, 64))


# -- device helpers used by describe -----------------------------------------------------------------


def test_resolve_device_and_cpu_autocast_is_a_no_op():
    from progeo.device import autocast, resolve_device, supports_amp, to_channels_last

    assert resolve_device("cpu") == torch.device("cpu")
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (expected_auto, "mps") and resolve_device(None) == resolve_device("auto")
    with pytest.raises(ConfigError, match="not a valid torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here; use --device cpu"):
            resolve_device("cuda:0")
    assert not supports_amp("cpu")
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    x = to_channels_last(torch.zeros(1, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last) and to_channels_last(torch.zeros(3)).shape == (3,)
