"""Backbones: names, pretrained weights (offline), local weight files, feature access, image size."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from progeo.errors import CheckpointError, ConfigError
from progeo.models import backbones, pretrained, registry
from progeo.models.backbones import load_clip
from progeo.models.geolocalizer import GeoLocalizer
from progeo.models.inference import encode_images, encode_texts


@pytest.fixture(scope="module")
def rn():
    torch.manual_seed(0)
    return load_clip("tiny-rn")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(1)
    return load_clip("tiny-vit")


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached weights anywhere: fresh home (~/.cache/clip) and Hugging Face cache."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, canonical", [("ViT-B/16", "ViT-B-16"), ("vit-b/32", "ViT-B-32"), ("rn50", "RN50"),
                                             ("RN101", "RN101"), ("tiny-vit", "tiny-vit"), ("TINY-RN", "tiny-rn")])
def test_architecture_names_accept_paper_spellings(name, canonical):
    assert registry.canonical_arch(name) == canonical


def test_backbone_spec_splits_tag_or_file():
    assert registry.split_backbone_spec("ViT-B/16:openai") == ("ViT-B-16", "openai")
    assert registry.split_backbone_spec("ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert registry.split_backbone_spec("RN50:/w/RN50.pt") == ("RN50", "/w/RN50.pt")
    assert registry.split_backbone_spec("tiny-rn") == ("tiny-rn", None)


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ConfigError, match=r"unknown backbone architecture 'RN5O'.*did you mean RN50"):
        registry.canonical_arch("RN5O")


def test_tiny_configs_are_registered_with_open_clip():
    assert {"tiny-rn", "tiny-vit"} <= set(registry.list_architectures())
    assert open_clip.get_model_config("tiny-vit")["text_cfg"]["context_length"] == 32


# -- pretrained weights ------------------------------------------------------------------------


def test_offline_pretrained_error_says_what_to_download(empty_caches):
    url = open_clip.get_pretrained_url("RN50", "openai")
    with pytest.raises(CheckpointError) as err:
        load_clip("RN50:openai", offline=True)
    msg = str(err.value)
    assert "RN50:openai" in msg and "not in the local cache" in msg and "offline" in msg
    assert url in msg and "timm/resnet50_clip.openai" in msg
    assert "--weights PATH" in msg


def test_offline_by_environment_and_unreachable_host(empty_caches, monkeypatch):
    monkeypatch.setenv("PROGEO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"laion/CLIP-ViT-B-32-laion2B-s34B-b79K.*--weights PATH"):
        load_clip("ViT-B/32:laion2b_s34b_b79k")
    monkeypatch.delenv("PROGEO_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(pretrained, "_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(CheckpointError, match=r"huggingface.co cannot be reached.*--weights PATH"):
        load_clip("ViT-B-16:openai")


def test_no_network_gives_the_download_message(empty_caches, monkeypatch):
    """The real reachability check, with a socket layer that refuses (nothing leaves the machine)."""
    tried = []

    def refuse(address, timeout=None, *args, **kwargs):
        tried.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(pretrained.socket, "create_connection", refuse)
    monkeypatch.delenv("PROGEO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match=r"RN50:openai are not in the local cache and huggingface.co cannot be reached"):
        load_clip("RN50:openai")
    assert [address for address, _ in tried] == [("huggingface.co", 443)]


def test_cached_url_weights_are_found(empty_caches):
    cache = empty_caches / "clipcache"
    cache.mkdir()
    fake = cache / open_clip.get_pretrained_url("RN50", "openai").rsplit("/", 1)[1]
    fake.write_bytes(b"not really weights")
    src = pretrained.resolve_pretrained("RN50", "openai", cache_dir=cache, offline=True)
    assert src.path == fake and src.tag == "openai" and src.quick_gelu is True


def test_tag_preprocessing_travels_with_an_explicit_weights_file(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    src = pretrained.resolve_pretrained("ViT-B-16", "openai", weights=weights)
    assert src.path == weights and src.quick_gelu is True
    assert tuple(src.preprocess["mean"]) == backbones.OPENAI_MEAN and src.preprocess["interpolation"] == "bicubic"


def test_unknown_tag_and_missing_file_errors():
    with pytest.raises(ConfigError, match=r"unknown pretrained tag 'nope' for RN50; known tags: openai"):
        load_clip("RN50:nope")
    with pytest.raises(CheckpointError, match=r"/no/such/RN50.pt does not exist"):
        load_clip("RN50:/no/such/RN50.pt")
    with pytest.raises(CheckpointError, match=r"does not exist; check --weights"):
        load_clip("tiny-rn", weights="/no/such/file.safetensors")


# -- local weight files ----------------------------------------------------------------------


def _save(kind: str, model, path):
    state = model.state_dict()
    if kind == "state_dict":
        torch.save(state, path)
    elif kind == "ddp_wrapped":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif kind == "torchscript":
        torch.jit.script(model).save(str(path))


@pytest.mark.parametrize("kind, suffix", [("state_dict", ".pt"), ("ddp_wrapped", ".pth"), ("safetensors", ".safetensors"),
                                          ("torchscript", ".pt")])
def test_local_weight_files_load_exactly(rn, tmp_path, kind, suffix):
    path = tmp_path / f"weights{suffix}"
    _save(kind, rn.model, path)
    loaded = load_clip("tiny-rn", weights=path)
    for k, v in rn.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert loaded.model_cfg["quick_gelu"] is (kind == "torchscript")  # OpenAI archives are QuickGELU models
    assert str(path) in loaded.source


def test_weights_of_another_architecture_are_refused_with_key_names(vit, tmp_path):
    path = tmp_path / "vit.pt"
    torch.save(vit.model.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_clip("tiny-rn", weights=path)
    msg = str(err.value)
    assert "shape mismatch(es): visual.conv1.weight (file 64x3x16x16, model 4x3x3x3)" in msg
    assert "missing key(s): visual.bn1.weight [4]" in msg
    assert "unexpected key(s): visual.class_embedding [64]" in msg


# -- feature access: equivalence with open_clip ----------------------------------------------------


def test_resnet_feature_map_and_attention_pool_match_encode_image(rn):
    x = torch.randn(2, 3, 64, 64)
    rn.model.eval()
    with torch.no_grad():
        fmap = backbones.resnet_feature_map(rn.visual, x)
        pooled = backbones.resnet_attention_pool(rn.visual, fmap)
        reference = rn.model.encode_image(x)
    assert fmap.shape == (2, backbones.resnet_feature_dim(rn.visual), 2, 2) == (2, 256, 2, 2)
    torch.testing.assert_close(pooled, reference)


@pytest.mark.parametrize("normalize", [False, True])
def test_vit_descriptor_is_clip_image_embedding(vit, normalize):
    model = GeoLocalizer.from_clip(vit, normalize=normalize).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        reference = vit.model.encode_image(x, normalize=normalize)
        torch.testing.assert_close(model(x), reference)
        torch.testing.assert_close(vit.visual(x), vit.model.encode_image(x))


# -- image size ----------------------------------------------------------------------------------


def test_pos_embedding_interpolation_224_to_512():
    torch.manual_seed(0)
    clip = load_clip("tiny-vit")
    visual = clip.visual
    backbones.set_image_size(visual, 224)
    assert visual.grid_size == (14, 14) and visual.positional_embedding.shape == (1 + 14 * 14, 64)
    before = visual.positional_embedding.detach().clone()
    backbones.set_image_size(visual, 512)
    pos = visual.positional_embedding
    assert visual.grid_size == (32, 32) and pos.shape == (1 + 32 * 32, 64) and visual.image_size == (512, 512)
    assert torch.equal(pos[0], before[0])  # class token's embedding is kept
    # the authors' resize (their CLIP's interpolate_embeddings): bicubic, align_corners=True
    grid = before[1:].reshape(1, 14, 14, 64).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=True).permute(0, 2, 3, 1).reshape(-1, 64)
    torch.testing.assert_close(pos[1:].detach(), expected)
    # corners of the grid keep their values exactly (what align_corners=True means)
    for r, c in ((0, 0), (0, 31), (31, 0), (31, 31)):
        torch.testing.assert_close(pos[1 + r * 32 + c], before[1 + (r // 31) * 13 * 14 + (c // 31) * 13])
    with torch.no_grad():
        assert visual(torch.randn(1, 3, 512, 512)).shape == (1, 64)


def test_pos_embedding_unchanged_when_size_is_the_same(vit):
    pos = vit.visual.positional_embedding.detach()
    assert backbones.interpolate_pos_embed(pos, (4, 4), 4) is pos
    visual = GeoLocalizer.from_clip(vit, image_size=64).backbone
    assert torch.equal(visual.positional_embedding, vit.visual.positional_embedding)
    param = visual.positional_embedding
    backbones.set_image_size(visual, 64)
    assert visual.positional_embedding is param  # not even replaced


def test_descriptor_model_at_a_new_size_keeps_the_clip_model_intact(vit):
    model = GeoLocalizer.from_clip(vit, image_size=128)
    assert model.backbone.positional_embedding.shape == (1 + 8 * 8, 64)
    assert vit.visual.positional_embedding.shape == (1 + 4 * 4, 64)
    assert model.preprocess_config.image_size == (128, 128)


def test_resnet_attention_pool_follows_the_image_size():
    torch.manual_seed(0)
    clip = load_clip("tiny-rn")
    pool = clip.visual.attnpool
    param = pool.positional_embedding
    backbones.set_image_size(clip.visual, 64)  # unchanged
    assert pool.positional_embedding is param and param.shape == (1 + 2 * 2, 256)
    backbones.set_image_size(clip.visual, 128)
    assert clip.visual.attnpool.positional_embedding.shape == (1 + 4 * 4, 256)
    # the attention pool (never resized by the authors) keeps open_clip's align_corners=False
    grid = param.detach()[1:].reshape(1, 2, 2, 256).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(-1, 256)
    torch.testing.assert_close(clip.visual.attnpool.positional_embedding[1:].detach(), expected)
    with torch.no_grad():
        assert clip.model.encode_image(torch.randn(2, 3, 128, 128)).shape == (2, 64)


def test_image_size_errors(vit, rn):
    with pytest.raises(ConfigError, match="not a multiple of the ViT patch size"):
        GeoLocalizer.from_clip(vit, image_size=100)
    with pytest.raises(ConfigError, match="not a multiple of 32"):
        GeoLocalizer.from_clip(rn, image_size=100)
    with pytest.raises(ConfigError, match="fc_output_dim=32 is not possible"):
        GeoLocalizer.from_clip(vit, fc_output_dim=32)


def test_models_command_lists_paper_and_tiny_backbones(capsys):
    from progeo.cli import main as cli_main

    assert cli_main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-rn" in out and "tiny-vit" in out
    assert any(line.startswith("ViT-B-16") and "openai" in line for line in out.splitlines())


@pytest.mark.parametrize("fixture", ["rn", "vit"])
def test_encode_images_and_texts_match_open_clip(request, fixture):
    clip = request.getfixturevalue(fixture)
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)  # NHWC uint8, as decoded
    mean = torch.tensor(clip.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.preprocess.std).view(1, 3, 1, 1)
    x = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        reference = clip.model.eval().encode_image(x)
        text_ref = clip.model.encode_text(clip.tokenizer()(["a street", "a city at night"]), normalize=True)
    feats = encode_images(clip, images, batch_size=2)
    assert feats.dtype.name == "float32" and feats.shape == (3, 64)
    torch.testing.assert_close(torch.from_numpy(feats), reference, rtol=1e-4, atol=1e-5)
    unit = encode_images(clip, images, normalize=True)
    torch.testing.assert_close(torch.from_numpy(unit).norm(dim=1), torch.ones(3))
    texts = encode_texts(clip, ["a street", "a city at night"], normalize=True)
    torch.testing.assert_close(torch.from_numpy(texts), text_ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match=r"need 64x64 images \(clip.preprocess\), got 32x32"):
        encode_images(clip, torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
