import json

import numpy as np
import pytest
import torch

from progeo.errors import ConfigError, DatasetError
from progeo.eval.descriptors_io import (
    DescriptorsMeta,
    DescriptorsWriter,
    load_descriptors,
    save_descriptors,
)

META = DescriptorsMeta(model="progeo-vit-b-16", image_size=(512, 512), dataset="sf_xl_small", split="test/database")


def _data(n=10, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    descriptors = rng.standard_normal((n, dim)).astype(np.float32)
    paths = [f"database/@{550000 + i}@{4180000 + i}@10@S@@@.jpg" for i in range(n)]
    utms = np.stack([550000.0 + np.arange(n), 4180000.0 + np.arange(n)], axis=1)
    return descriptors, paths, utms


def test_incremental_round_trip_is_memory_mapped(tmp_path):
    descriptors, paths, utms = _data()
    with DescriptorsWriter(tmp_path / "desc", capacity=10, dim=8, meta=META) as writer:
        writer.append(torch.from_numpy(descriptors[:4]), paths[:4], utms[:4])
        writer.append(descriptors[4:], paths[4:], utms[4:])
    saved = load_descriptors(tmp_path / "desc", expected_dim=8)
    assert isinstance(saved.descriptors, np.memmap) and saved.descriptors.dtype == np.float16
    np.testing.assert_allclose(saved.descriptors, descriptors, atol=2e-3)
    assert saved.paths == paths and np.array_equal(saved.utms, utms) and len(saved) == 10
    assert saved.meta.count == 10 and saved.meta.dim == 8 and saved.meta.image_size == (512, 512)
    assert saved.meta.model == "progeo-vit-b-16" and saved.meta.split == "test/database" and saved.meta.has_utms
    assert sorted(p.name for p in (tmp_path / "desc").iterdir()) == ["descriptors.npy", "meta.json", "paths.txt", "utms.npy"]


def test_fewer_rows_than_capacity_are_shrunk(tmp_path):
    descriptors, paths, _ = _data()
    writer = DescriptorsWriter(tmp_path, capacity=10, dim=8, meta=META)
    writer.append(descriptors[:7], paths[:7])
    saved = writer.close()
    assert saved.descriptors.shape == (7, 8) and saved.utms is None and not saved.meta.has_utms
    np.testing.assert_allclose(saved.descriptors, descriptors[:7], atol=2e-3)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_failed_run_leaves_previous_folder_untouched(tmp_path):
    descriptors, paths, utms = _data()
    save_descriptors(tmp_path, descriptors, paths, META, utms)
    with pytest.raises(RuntimeError, match="model crashed"):
        with DescriptorsWriter(tmp_path, capacity=10, dim=8, meta=META) as writer:
            writer.append(descriptors[:3] * 0, paths[:3], utms[:3])
            raise RuntimeError("model crashed")
    saved = load_descriptors(tmp_path)
    np.testing.assert_allclose(saved.descriptors, descriptors, atol=2e-3)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_writer_rejects_bad_batches(tmp_path):
    descriptors, paths, utms = _data()
    with DescriptorsWriter(tmp_path, capacity=4, dim=8, meta=META) as writer:
        with pytest.raises(ConfigError, match="dim 8"):
            writer.append(descriptors[:2, :4], paths[:2], utms[:2])
        with pytest.raises(ConfigError, match="2 paths"):
            writer.append(descriptors[:2], paths[:3], utms[:2])
        writer.append(descriptors[:2], paths[:2], utms[:2])
        with pytest.raises(ConfigError, match="every batch or with none"):
            writer.append(descriptors[2:4], paths[2:4])
        with pytest.raises(ConfigError, match="capacity"):
            writer.append(descriptors[2:5], paths[2:5], utms[2:5])


def test_validation_errors_name_the_file(tmp_path):
    descriptors, paths, utms = _data()
    save_descriptors(tmp_path, descriptors, paths, META, utms)
    with pytest.raises(DatasetError, match=r"descriptors\.npy holds 8-d descriptors but the model gives 16-d"):
        load_descriptors(tmp_path, expected_dim=16)
    (tmp_path / "paths.txt").write_text("\n".join(paths[:-1]) + "\n")
    with pytest.raises(DatasetError, match=r"paths\.txt is unreadable: .*\(9 lines for 10 descriptors\); extract the"):
        load_descriptors(tmp_path)
    (tmp_path / "paths.txt").write_text("\n".join(paths) + "\n")
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["count"] = 11
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"descriptors\.npy is unreadable: .*shape \(10, 8\), but meta\.json says 11 x 8"):
        load_descriptors(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DatasetError, match=r"meta\.json is missing"):
        load_descriptors(tmp_path)
