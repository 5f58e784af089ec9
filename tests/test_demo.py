"""Smoke test of the main job: ``progeo demo --quick`` runs every step end to end."""

from __future__ import annotations

import json
import logging

import pytest

from progeo.cli import main
from progeo.demo import DemoConfig, prepare_world


@pytest.mark.slow
def test_demo_quick_runs_the_whole_pipeline(tmp_path, capsys, caplog):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Recall@N" in printed and "GEM" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["preset"] == "tiny"
    assert set(report["recalls"]) == {"zero-shot (pretrained CLIP)", "CosPlace (no text loss)", "ProGEO (stage 1 + 2)"}
    for folders in report["recalls"].values():
        assert set(folders) == {"queries", "queries_night", "queries_occlusion"}
        for recalls in folders.values():
            values = [recalls[str(n)] for n in (1, 5, 10, 20)]
            assert all(0.0 <= v <= 100.0 for v in values) and values == sorted(values)
    assert report["pretrain_zeroshot"]["city_top1"] > report["pretrain_zeroshot"]["chance"]
    assert report["gem"]
    assert (out / "report.md").read_text().count("| ProGEO (stage 1 + 2) |") == 3
    assert (out / "recalls.png").stat().st_size > 0
    assert list((out / "eval" / "progeo" / "grids").glob("*.jpg"))

    # a second run reuses the world instead of rendering it again
    world_json = (out / "world-tiny-seed0" / "world.json").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="progeo.demo"):
        assert prepare_world(DemoConfig(out_dir=out, quick=True)) == out / "world-tiny-seed0"
    assert "reusing the synthetic world" in caplog.text
    assert (out / "world-tiny-seed0" / "world.json").stat().st_mtime_ns == world_json
