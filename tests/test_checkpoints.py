"""Saved-model format, load errors, import of CosPlace-style checkpoints, CLI and torch.hub."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import progeo
from progeo.cli import main as cli_main
from progeo.errors import CheckpointError
from progeo.models.backbones import IMAGENET_MEAN, load_clip
from progeo.models.checkpoints import load_model, read_model_config, save_model
from progeo.models.geolocalizer import GeoLocalizer
from progeo.models.importers import import_checkpoint

REPO = Path(__file__).resolve().parents[1]
# ModifiedResNet children as OpenAI's clip/model.py orders them; a CosPlace-style nn.Sequential of
# them numbers its entries in this order (avgpool and relu hold no tensors).
OPENAI_RESNET_CHILDREN = ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "avgpool", "relu",
                          "layer1", "layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rn_model():
    torch.manual_seed(0)
    model = GeoLocalizer.from_clip(load_clip("tiny-rn"), fc_output_dim=32)
    with torch.no_grad():  # make the head and the batch-norm statistics non-trivial
        model.aggregation[1].p.fill_(2.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def vit_model():
    torch.manual_seed(0)
    return GeoLocalizer.from_clip(load_clip("tiny-vit"), image_size=128)


# -- save / load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["rn_model", "vit_model"])
@pytest.mark.parametrize("single_file", [False, True])
def test_save_load_gives_identical_descriptors(request, tmp_path, fixture, single_file):
    model = request.getfixturevalue(fixture)
    size = model.image_size
    x = torch.randint(0, 256, (3, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path = tmp_path / ("m.safetensors" if single_file else "m")
    save_model(model, path, provenance={"epoch": 5, "recalls": {"R@1": 0.5}})
    loaded = load_model(path, device="cpu")
    np.testing.assert_array_equal(loaded.describe(x), model.describe(x))
    cfg = read_model_config(path)
    assert cfg.arch == model.config.arch and cfg.image_size == size and cfg.fc_output_dim == model.descriptor_dim
    assert cfg.provenance["epoch"] == 5 and cfg.provenance["backbone_weights"] == "random init"
    assert loaded.preprocess_config == model.preprocess_config and not loaded.training


def test_folder_layout_and_config_fields(rn_model, tmp_path):
    save_model(rn_model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format"] == "progeo-model" and cfg["arch"] == "tiny-rn" and cfg["head"] == "gem"
    assert cfg["fc_output_dim"] == 32 and cfg["image_size"] == [64, 64]
    assert set(cfg["preprocess"]) == {"image_size", "mean", "std", "interpolation", "resize_mode", "test_resize"}
    assert cfg["clip_config"]["vision_cfg"]["layers"] == [1, 1, 1, 1]
    assert progeo.load_model(tmp_path / "m").descriptor_dim == 32  # the package-level entry point


def _edit_config(folder: Path, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_search_metric_is_a_saved_property_of_the_model(rn_model, vit_model, tmp_path):
    # the head decides: GeM and normalized CLIP embeddings are unit vectors (cosine); the authors'
    # ViT head returns the raw embedding, which they rank by Euclidean distance (l2)
    assert (rn_model.metric, vit_model.metric) == ("cosine", "l2")
    assert GeoLocalizer.from_clip(load_clip("tiny-vit"), normalize=True).metric == "cosine"
    assert GeoLocalizer.from_clip(load_clip("tiny-vit"), metric="cosine").metric == "cosine"  # explicit wins
    for model, name in ((rn_model, "rn"), (vit_model, "vit")):
        save_model(model, tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["metric"] == model.metric
        assert load_model(tmp_path / name).metric == read_model_config(tmp_path / name).metric == model.metric
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        del cfg["metric"]  # a model saved before the metric was recorded gets its head's
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
        assert load_model(tmp_path / name).metric == model.metric
    _edit_config(tmp_path / "vit", metric="cosine")  # a recorded choice is kept
    assert load_model(tmp_path / "vit").metric == "cosine"
    _edit_config(tmp_path / "vit", metric="manhattan")
    with pytest.raises(CheckpointError, match="metric='manhattan'; expected one of cosine, l2"):
        load_model(tmp_path / "vit")
    state = {f"backbone.{k}": v for k, v in vit_model.backbone.state_dict().items()}
    torch.save(state, tmp_path / "vit.pth")
    import_checkpoint(tmp_path / "vit.pth", "tiny-vit", tmp_path / "imported", quick_gelu=False)
    assert read_model_config(tmp_path / "imported").metric == "l2"  # the authors' ViT evaluation


def test_wrong_architecture_is_explained(rn_model, vit_model, tmp_path):
    save_model(rn_model, tmp_path / "m")
    vit_cfg = vit_model.config.to_dict()
    _edit_config(tmp_path / "m", arch="tiny-vit", head="clip", fc_output_dim=64, clip_config=vit_cfg["clip_config"],
                 preprocess=vit_cfg["preprocess"])
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "m")
    msg = str(err.value)
    assert "config: tiny-vit" in msg and "missing key(s): backbone.class_embedding [64]" in msg
    assert "unexpected key(s)" in msg and "aggregation.1.p [1]" in msg


def test_wrong_dimension_and_missing_keys_are_explained(rn_model, tmp_path):
    from safetensors.torch import load_file, save_file

    save_model(rn_model, tmp_path / "m")
    _edit_config(tmp_path / "m", fc_output_dim=16)
    with pytest.raises(CheckpointError, match=r"aggregation.3.weight \(file 32x256, model 16x256\)"):
        load_model(tmp_path / "m")
    _edit_config(tmp_path / "m", fc_output_dim=32)
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    del state["aggregation.1.p"]
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): aggregation.1.p \[1\]"):
        load_model(tmp_path / "m")


def test_unreadable_saved_models_are_explained(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match="no saved model at"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_model(tmp_path / "empty")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no 'progeo_config' metadata"):
        load_model(tmp_path / "plain.safetensors")
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="progeo import-checkpoint"):
        load_model(tmp_path / "model.pth")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"format": "progeo-model", "arch": "tiny-rn"}))
    with pytest.raises(CheckpointError, match="lacks field"):
        load_model(tmp_path / "bad")


# -- import of CosPlace / ProGEO state dicts ---------------------------------------------------------


def _cosplace_state(model: GeoLocalizer, sequential: bool) -> dict[str, torch.Tensor]:
    """The authors' layout: backbone = CLIP visual (attnpool included), text encoder alongside, DDP prefix."""
    state = {}
    clip = load_clip("tiny-rn")
    for k, v in model.backbone.state_dict().items():
        child, _, rest = k.partition(".")
        name = f"{OPENAI_RESNET_CHILDREN.index(child)}.{rest}" if sequential else k
        state[f"module.backbone.{name}"] = v.clone()
    if not sequential:
        for k, v in clip.visual.attnpool.state_dict().items():
            state[f"module.backbone.attnpool.{k}"] = v
    if not sequential:  # some exporters drop the batch-norm counters
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for k, v in model.aggregation.state_dict().items():
        state[f"module.aggregation.{k}"] = v.clone()
    state["module.token_embedding.weight"] = clip.model.token_embedding.weight.detach()
    state["module.text_encoder.positional_embedding"] = clip.model.positional_embedding.detach()
    state["module.text_encoder.text_projection"] = clip.model.text_projection.detach()
    return state


@pytest.mark.parametrize("sequential", [False, True])
def test_import_cosplace_style_state_dict(rn_model, images, tmp_path, sequential):
    torch.save(_cosplace_state(rn_model, sequential), tmp_path / "best_model.pth")
    report = import_checkpoint(tmp_path / "best_model.pth", "tiny-rn", tmp_path / "out", image_size=64)
    assert report.mapping == ("sequential order" if sequential else "names")
    assert report.fc_output_dim == 32 and report.dropped["text side"] == 3
    assert ("attention pool (unused by the GeM head)" in report.dropped) is not sequential
    imported = load_model(tmp_path / "out")
    assert imported.preprocess_config.mean == IMAGENET_MEAN  # the authors' normalization
    x = images.float() / 255  # float input: taken as normalized, so the mean/std do not matter here
    np.testing.assert_array_equal(imported.describe(x), rn_model.describe(x))


def test_import_sequential_with_a_wrong_shape_names_the_child(rn_model, tmp_path):
    state = _cosplace_state(rn_model, sequential=True)
    state["module.backbone.2.weight"] = torch.zeros(4, 4, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"backbone.2.\* does not match child 'conv2' by order.*file 4x4x5x5, model 4x4x3x3"):
        import_checkpoint(tmp_path / "bad.pth", "tiny-rn", tmp_path / "out")


def test_import_vit_checkpoint_infers_size_and_resizes(vit_model, tmp_path):
    state = {f"backbone.{k}": v for k, v in vit_model.backbone.state_dict().items()}
    torch.save({"model_state_dict": state, "epoch": 2}, tmp_path / "vit.pth")
    report = import_checkpoint(tmp_path / "vit.pth", "tiny-vit", tmp_path / "a", normalization="clip", quick_gelu=False)
    assert report.image_size == (128, 128) and report.fc_output_dim == 64 and report.head == "clip"
    x = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    np.testing.assert_array_equal(load_model(tmp_path / "a").describe(x), vit_model.describe(x))
    resized = import_checkpoint(tmp_path / "vit.pth", "tiny-vit", tmp_path / "b", image_size=64)
    assert resized.image_size == (64, 64) and "position embedding resized 8x8 -> (4, 4)" in resized.notes[0]


def test_imported_vit_grid_is_resized_as_the_authors_do(vit_model, tmp_path):
    """A checkpoint grid of 8x8 imported at 256 px (16x16): bicubic with align_corners=True."""
    state = {f"backbone.{k}": v for k, v in vit_model.backbone.state_dict().items()}
    torch.save(state, tmp_path / "vit.pth")
    import_checkpoint(tmp_path / "vit.pth", "tiny-vit", tmp_path / "c", image_size=256)
    pos = load_model(tmp_path / "c").backbone.positional_embedding.detach()
    old = state["backbone.positional_embedding"]
    grid = old[1:].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", align_corners=True)
    torch.testing.assert_close(pos[1:], expected.permute(0, 2, 3, 1).reshape(256, -1))
    torch.testing.assert_close(pos[0], old[0])


def test_import_full_clip_checkpoint_as_vit_model(tmp_path):
    torch.manual_seed(3)
    clip = load_clip("tiny-vit")
    torch.save(clip.model.state_dict(), tmp_path / "clip.pt")  # visual.* + the text tower
    report = import_checkpoint(tmp_path / "clip.pt", "tiny-vit", tmp_path / "o", normalization="clip", quick_gelu=False)
    assert report.image_size == (64, 64) and report.dropped["text side"] > 10
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = clip.model.eval().encode_image(x).numpy()
    np.testing.assert_allclose(load_model(tmp_path / "o").describe(x), expected, rtol=1e-5, atol=1e-6)


def test_import_errors(rn_model, tmp_path):
    torch.save({"backbone.conv1.weight": torch.zeros(1), "classifier.weight": torch.zeros(1)}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="unrecognised key.*classifier.weight"):
        import_checkpoint(tmp_path / "odd.pth", "tiny-rn", tmp_path / "o")
    torch.save(_cosplace_state(rn_model, sequential=False), tmp_path / "rn.pth")
    with pytest.raises(CheckpointError, match=r"aggregation.3.weight \(file 32x256, model 48x256\)"):
        import_checkpoint(tmp_path / "rn.pth", "tiny-rn", tmp_path / "o", fc_output_dim=48)
    with pytest.raises(CheckpointError, match="does not match the model"):
        import_checkpoint(tmp_path / "rn.pth", "RN50", tmp_path / "o")


def test_pickled_checkpoint_needs_trust_flag(rn_model, images, tmp_path):
    state = {k.removeprefix("module."): v for k, v in _cosplace_state(rn_model, False).items()}
    torch.save({"model_state_dict": state, "args": argparse.Namespace(backbone="tiny-rn")}, tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match=r"pickle that holds Python objects.*--trust-pickle"):
        import_checkpoint(tmp_path / "ckpt.pth", "tiny-rn", tmp_path / "o")
    import_checkpoint(tmp_path / "ckpt.pth", "tiny-rn", tmp_path / "o", trust_pickle=True, normalization="clip")
    np.testing.assert_array_equal(load_model(tmp_path / "o").describe(images), rn_model.describe(images))


def test_import_checkpoint_cli(rn_model, tmp_path, capsys):
    torch.save(_cosplace_state(rn_model, sequential=True), tmp_path / "m.pth")
    rc = cli_main(["import-checkpoint", str(tmp_path / "m.pth"), "--backbone", "tiny-rn", "--fc-output-dim", "32",
                   "--out", str(tmp_path / "out"), "--image-size", "64"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "imported" in out and "sequential order" in out and "gem head, 32-d, 64x64 px" in out
    assert read_model_config(tmp_path / "out").provenance["imported_from"] == str(tmp_path / "m.pth")
    assert cli_main(["import-checkpoint", str(tmp_path / "none.pth"), "--backbone", "tiny-rn", "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


# -- torch.hub -----------------------------------------------------------------------------------


def test_torch_hub_loads_a_saved_model_and_a_backbone_name(rn_model, images, tmp_path):
    save_model(rn_model, tmp_path / "m")
    hub_model = torch.hub.load(str(REPO), "progeo", path_or_name=str(tmp_path / "m"), source="local")
    np.testing.assert_array_equal(hub_model.describe(images), rn_model.describe(images))
    fresh = torch.hub.load(str(REPO), "progeo", path_or_name="tiny-vit", source="local", image_size=128)
    assert fresh.image_size == (128, 128) and fresh.descriptor_dim == 64
