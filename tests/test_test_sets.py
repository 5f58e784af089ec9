"""Test sets: query-folder selection, CosPlace-like attributes, positives against brute force."""

import logging

import numpy as np
import pytest
import utm

from progeo.data.test_sets import Positives, TestSet, list_query_folders, positives_within, select_query_folder
from progeo.data.vg_names import format_vg_name
from progeo.errors import ConfigError, DatasetError

E0, N0 = 551000.0, 4180000.0


def _write(folder, coords):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (e, n) in enumerate(coords):
        lat, lon = utm.to_latlon(e, n, 10, "S")
        (folder / format_vg_name(e, n, 10, "S", lat, lon, pano_id=f"p{i}", heading=0)).write_bytes(b"")


def _make(root, db, queries, query_folders=("queries",)):
    _write(root / "database", db)
    for name in query_folders:
        _write(root / name, queries)
    return root


def test_query_folder_selection(tmp_path):
    for name in ("queries_v1", "queries_night", "database", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "queries_file.txt").write_text("")
    assert list_query_folders(tmp_path) == ["queries_night", "queries_v1"]
    assert select_query_folder(tmp_path, "queries_night") == "queries_night"
    with pytest.raises(ConfigError) as err:  # ambiguous: the error lists the choices
        select_query_folder(tmp_path)
    assert "queries_night, queries_v1" in str(err.value) and "--queries" in str(err.value)
    with pytest.raises(ConfigError, match="choose one of: queries_night, queries_v1"):
        select_query_folder(tmp_path, "queries_v2")
    (tmp_path / "queries").mkdir()
    assert select_query_folder(tmp_path) == "queries"  # the default when present
    only = tmp_path / "only"
    (only / "queries_v1").mkdir(parents=True)
    assert select_query_folder(only) == "queries_v1"  # the only one
    with pytest.raises(ConfigError, match="no query folder"):
        select_query_folder(tmp_path / "other")


def test_test_set_attributes_and_positives(tmp_path, caplog):
    db = [(E0 + 10 * i, N0) for i in range(10)]  # a street of 10 images 10 m apart
    queries = [(E0, N0 + 3), (E0 + 45, N0 - 20), (E0 + 5000, N0 + 5000)]  # the last one has no positive
    ts = _make(tmp_path / "sf", db, queries, ("queries", "queries_night"))
    with caplog.at_level(logging.WARNING):
        t = TestSet(ts)
        positives = t.get_positives()
    assert t.queries_folder == "queries" and t.database_num == 10 and t.queries_num == 3 and len(t) == 13
    assert t.database_utms.dtype == np.float64 and t.database_utms.shape == (10, 2)
    assert t.queries_utms.shape == (3, 2) and len(t.database_paths) == 10 and len(t.queries_paths) == 3
    assert t.images_paths[10] == t.queries_paths[0] and t.images_paths[-1] == t.queries_paths[2]
    assert all(p.startswith(str(ts / "database")) for p in t.database_paths)
    expected = [np.flatnonzero(np.linalg.norm(t.database_utms - q, axis=1) <= 25) for q in t.queries_utms]
    assert [p.tolist() for p in positives] == [e.tolist() for e in expected]
    assert positives[2].size == 0 and t.queries_without_positives.tolist() == [2]
    indptr, indices = t.positives_csr
    assert [indices[indptr[q]:indptr[q + 1]].tolist() for q in range(3)] == [p.tolist() for p in positives]
    assert "1 of 3 queries" in caplog.text
    wide = TestSet(ts, "queries_night", positive_dist_threshold=60)
    assert wide.queries_folder == "queries_night" and wide.positives.counts.tolist() == [6, 10, 0]


def test_positives_match_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    db = rng.uniform(0, 500, (400, 2))
    q = np.concatenate([rng.uniform(0, 500, (60, 2)), [[5000.0, 5000.0]], [db[0] + [25.0, 0.0]]])
    pos = positives_within(q, db, 25.0)
    d = np.linalg.norm(q[:, None] - db[None], axis=2)
    for i in range(len(q)):
        assert pos[i].tolist() == np.flatnonzero(d[i] <= 25.0).tolist()
    assert pos[len(q) - 2].size == 0 and 0 in pos[len(q) - 1].tolist()  # exactly 25 m counts
    assert pos.indptr[0] == 0 and pos.indptr[-1] == pos.indices.size and len(pos.as_list()) == len(q)
    empty = positives_within(q[:0], db, 25.0)
    assert isinstance(empty, Positives) and len(empty) == 0 and empty.as_list() == []


def test_missing_parts_give_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="test folder .* does not exist"):
        TestSet(tmp_path / "nope")
    _write(tmp_path / "t" / "queries", [(E0, N0)])
    with pytest.raises(DatasetError, match="database folder .*database does not exist"):
        TestSet(tmp_path / "t")
    (tmp_path / "t" / "database").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        TestSet(tmp_path / "t")
    with pytest.raises(ConfigError, match="positive_dist_threshold"):
        TestSet(tmp_path / "t", positive_dist_threshold=0)
