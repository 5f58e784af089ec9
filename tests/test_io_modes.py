"""Atomically written files get the permissions of a plain open(): 0o666 less the umask, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from progeo.io import atomic_path, write_json_atomic, write_text_atomic


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _all_files_have(folder: Path, mode: int) -> None:
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and {str(p.relative_to(folder)): oct(_mode(p)) for p in files} == \
        {str(p.relative_to(folder)): oct(mode) for p in files}


def test_plain_atomic_writers(tmp_path, umask):
    import faiss
    from safetensors.torch import save_file
    import torch

    from progeo.eval.search import IndexConfig, build_index, save_index
    from progeo.train.run_dir import save_state

    expected = 0o666 & ~umask
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert _mode(tmp_path / "plain.txt") == expected  # what a plain open() gives
    write_text_atomic(tmp_path / "a.txt", "hello")
    write_json_atomic(tmp_path / "a.json", {"a": 1})
    write_json_atomic(tmp_path / "a.json", {"a": 2})  # a replaced file too
    with atomic_path(tmp_path / "a.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, np.zeros(3))
    with atomic_path(tmp_path / "t.safetensors") as tmp:
        save_file({"x": torch.zeros(2)}, str(tmp))
    save_state(tmp_path / "state.safetensors", {"w": torch.ones(2)})
    index = build_index(np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32), IndexConfig(),
                        progress=False)
    save_index(index, tmp_path / "index.faiss", IndexConfig())
    assert isinstance(faiss.read_index(str(tmp_path / "index.faiss")), faiss.Index)
    _all_files_have(tmp_path, expected)


def test_descriptors_model_and_results_writers(tmp_path, umask):
    from progeo.eval.descriptors_io import DescriptorsMeta, DescriptorsWriter
    from progeo.models import build_model, save_model

    with DescriptorsWriter(tmp_path / "desc", capacity=4, dim=3, meta=DescriptorsMeta("m", (8, 8))) as writer:
        writer.append(np.ones((3, 3), np.float32), ["a", "b", "c"], np.zeros((3, 2)))  # shrunk copy on close
    save_model(build_model("tiny-vit"), tmp_path / "model")
    _all_files_have(tmp_path, 0o666 & ~umask)


def test_synthetic_world(tmp_path, umask):
    from progeo.data.synthetic import Preset, generate_world

    micro = Preset("micro", ("Lisbon",), 32, train_cells=1, val_db_length=10.0, test_db_length=10.0,
                   val_queries=2, test_queries=2)
    generate_world(tmp_path / "world", micro, workers=1)
    _all_files_have(tmp_path / "world", 0o666 & ~umask)
    assert _mode(tmp_path / "world") == 0o777 & ~umask
