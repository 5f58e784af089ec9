"""Imported checkpoints record the authors' test protocol: ResNets see test images at native size."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from progeo.cli import main as cli_main
from progeo.data.vg_names import format_vg_name
from progeo.errors import ConfigError
from progeo.eval.descriptors_io import load_descriptors
from progeo.eval.evaluate import EvalConfig, evaluate
from progeo.models.backbones import load_clip
from progeo.models.checkpoints import load_model, read_model_config
from progeo.models.geolocalizer import GeoLocalizer
from progeo.models.importers import import_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZES = [(64, 64), (96, 64), (64, 128), (96, 64), (64, 64), (128, 96)]  # (height, width), mixed on purpose


@pytest.fixture(scope="module")
def test_set(tmp_path_factory):
    """database/ (6 images) and queries/ (3 images) of mixed native sizes."""
    root = tmp_path_factory.mktemp("native") / "test"
    rng = np.random.default_rng(0)
    for folder, sizes in (("database", SIZES), ("queries", SIZES[1:4])):
        (root / folder).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            name = format_vg_name(550000 + 7 * i, 4180000 + 5 * i, 10, "S", heading=0, extension=".png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / folder / name)
    return root


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """An authors-style RN checkpoint (backbone.* with the attention pool, aggregation.*) imported."""
    torch.manual_seed(0)
    clip = load_clip("tiny-rn")
    model = GeoLocalizer.from_clip(clip, fc_output_dim=32)
    with torch.no_grad():
        model.aggregation[1].p.fill_(2.5)
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    state |= {f"backbone.attnpool.{k}": v for k, v in clip.visual.attnpool.state_dict().items()}  # 2x2 grid: 64 px
    state |= {f"aggregation.{k}": v for k, v in model.aggregation.state_dict().items()}
    folder = tmp_path_factory.mktemp("imported")
    torch.save(state, folder / "best_model.pth")
    report = import_checkpoint(folder / "best_model.pth", "tiny-rn", folder / "model")
    return folder / "model", report


def _native_reference(model, paths):
    """Each image decoded at its own size and described alone (the authors' eval.py for queries)."""
    rows = []
    for path in paths:
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        rows.append(model.describe(pixels[None], amp=False)[0])
    return np.stack(rows)


def test_import_records_the_authors_protocol(imported):
    folder, report = imported
    assert report.image_size == (512, 512) and report.test_resize is False  # not the attention pool's 64 px
    pre = read_model_config(folder).preprocess
    assert pre.image_size == (512, 512) and pre.test_resize is False


def test_eval_of_an_imported_resnet_uses_native_sizes(imported, test_set):
    model = load_model(imported[0])
    result = evaluate(model, test_set, cfg=EvalConfig(progress=False, amp=False))[0]
    db, q = result.database, result.queries
    np.testing.assert_allclose(db.descriptors, _native_reference(model, [db.paths[i] for i in db.rows]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(q.descriptors, _native_reference(model, [q.paths[i] for i in q.rows]), rtol=1e-4, atol=1e-5)
    assert result.as_dict()["image_size"] == "native"


def test_eval_cli_without_flags_then_with_resize(imported, test_set, tmp_path):
    model_dir = str(imported[0])
    args = ["eval", "--model", model_dir, "--test-set", str(test_set), "--no-progress", "--device", "cpu"]
    assert cli_main([*args, "--out", str(tmp_path / "a"), "--save-descriptors", str(tmp_path / "d")]) == 0
    assert json.loads((tmp_path / "a" / "results.json").read_text())["results"][0]["image_size"] == "native"
    saved = load_descriptors(next((tmp_path / "d").iterdir()) / "queries")
    assert saved.meta.image_size is None
    reference = _native_reference(load_model(model_dir), saved.paths)
    np.testing.assert_allclose(np.asarray(saved.descriptors, dtype=np.float32), reference, rtol=2e-3, atol=2e-3)
    assert cli_main([*args, "--out", str(tmp_path / "b"), "--resize", "64"]) == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["results"][0]["image_size"] == [64, 64]
    assert cli_main([*args, "--out", str(tmp_path / "c"), "--resize", "64", "--native-size"]) == 2


def test_vit_import_resizes_its_test_images(test_set, tmp_path):
    torch.manual_seed(0)
    model = GeoLocalizer.from_clip(load_clip("tiny-vit"), image_size=128)
    torch.save({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}, tmp_path / "vit.pth")
    report = import_checkpoint(tmp_path / "vit.pth", "tiny-vit", tmp_path / "m")
    assert report.image_size == (128, 128) and report.test_resize is True
    assert read_model_config(tmp_path / "m").preprocess.test_resize is True
    with pytest.raises(ConfigError, match="must be resized"):
        import_checkpoint(tmp_path / "vit.pth", "tiny-vit", tmp_path / "n", test_resize=False)
    vit = load_model(tmp_path / "m")
    with pytest.raises(ConfigError, match="drop --native-size"):
        evaluate(vit, test_set, cfg=EvalConfig(progress=False, native_size=True))
