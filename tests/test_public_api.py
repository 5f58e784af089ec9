"""The public API: what ``import progeo`` offers, describe leaving the model as it was, the Index
round trip, model references resolved by lookup, and the README's Python API block, executed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import progeo
from progeo.data.test_sets import TestSet
from progeo.errors import CheckpointError, ConfigError
from progeo.eval.search import IndexConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
README = Path(__file__).resolve().parents[1] / "README.md"
API = {"load_model", "build_model", "save_model", "describe", "TestSet", "evaluate", "EvalConfig", "Index",
       "Localizer", "gem_metrics", "run_zeroshot", "fit_probe", "evaluate_probe", "run_gem_report"}


def test_dir_lists_the_api_and_import_stays_light():
    assert API <= set(dir(progeo)) and API <= set(progeo.__all__)
    for name in progeo.__all__:
        assert getattr(progeo, name) is not None, name
    from progeo import Index, describe, evaluate  # noqa: F401  (the from-import form works too)

    code = "import sys, progeo; print('torch' in sys.modules, 'faiss' in sys.modules, 'open_clip' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.split() == ["False", "False", "False"]
    # the GEM metrics and recall@N are no longer two functions named evaluate
    assert progeo.evaluate.__module__ == "progeo.eval.evaluate" and progeo.gem_metrics.__name__ == "gem_metrics"


@pytest.fixture(scope="module")
def rn():
    torch.manual_seed(0)
    return progeo.build_model("tiny-rn")


def test_describe_leaves_mode_device_and_layout_unchanged(rn, tiny_world):
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    rn.eval()
    reference = progeo.describe(rn, images, channels_last=False)
    rn.train()
    rn.to(memory_format=torch.channels_last)
    device = rn.device
    try:
        for kwargs in ({}, {"channels_last": False}, {"device": "cpu", "channels_last": False}):
            np.testing.assert_allclose(progeo.describe(rn, images, **kwargs), reference, rtol=1e-4, atol=1e-5)
            assert rn.training and rn.device == device  # still training, where it was
            assert rn.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # layout as it was
        paths = TestSet(tiny_world / "test").queries_paths[:4]
        assert progeo.describe(rn, list(paths)).shape == (4, rn.descriptor_dim) and rn.training
        rn.describe(images, channels_last=False)  # the method too
        assert rn.training and rn.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    finally:
        rn.eval().to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_index_build_save_load_search_round_trip(rn, tiny_world, tmp_path, metric):
    database = tiny_world / "test" / "database"
    index = progeo.Index.build(rn, database, index=IndexConfig(metric=metric), model_ref="tiny-rn", progress=False)
    assert len(index) == 192 and index.metric == metric and len(index.coordinates) == 192
    paths = list(TestSet(tiny_world / "test").queries_paths)
    queries = progeo.describe(rn, paths)
    scores, ids = index.search(queries, k=5)
    assert ids.shape == (30, 5) and (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    index.save(tmp_path / "idx")
    with pytest.raises(ConfigError, match="already holds an index"):
        index.save(tmp_path / "idx")
    loaded = progeo.Index.load(tmp_path / "idx")
    assert loaded.metric == metric and loaded.image_size == index.image_size and loaded.model is not None
    again_scores, again_ids = loaded.search(queries, k=5)
    assert (again_ids[:, 0] == ids[:, 0]).mean() >= 0.9  # float16 descriptors on disk: rare ties may flip
    np.testing.assert_allclose(again_scores, scores, rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(loaded.coordinates.east, index.coordinates.east)
    assert list(loaded.coordinates.paths) == list(index.coordinates.paths)
    localized = progeo.Localizer.from_index(loaded).localize(paths[:2], top_k=3)
    assert [p.matches[0].database_index for p in localized] == list(again_ids[:2, 0])


def test_model_references_are_resolved_by_lookup(tmp_path, monkeypatch):
    from progeo.models.checkpoints import load_model_or_backbone

    monkeypatch.setenv("PROGEO_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached CLIP weights
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="not in the local cache and this machine is set to offline mode"):
        load_model_or_backbone("ViT-B/16:openai")  # the paper's spelling is a backbone, not a path
    model = load_model_or_backbone("tiny/vit")  # a slash, no colon: still looked up in the registry
    assert model.config.arch == "tiny-vit"
    progeo.save_model(model, tmp_path / "runs" / "m")
    assert load_model_or_backbone(str(tmp_path / "runs" / "m")).config.arch == "tiny-vit"  # an existing path
    with pytest.raises(ConfigError, match=r"tried a saved model at .*nowhere.* and the backbone registry"):
        load_model_or_backbone("nowhere/model.safetensors")


def _readme_python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_api_block_runs(tiny_world, tmp_path, monkeypatch, capsys):
    blocks = _readme_python_blocks()
    assert blocks and "progeo.Localizer.from_index" in blocks[0]
    (tmp_path / "world").symlink_to(tiny_world)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    for block in blocks:
        exec(compile(block, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("{'queries': ") and len(printed) == 4
    assert (tmp_path / "world_index" / "index.json").is_file()
