"""``progeo demo``: the main job of ``make demo``, on the built-in synthetic world.

Steps (each reuses what an earlier run left in the output folder when it matches):

1. generate the synthetic world (or reuse it when its manifest matches preset, seed and size);
2. validate it with the same checks as ``progeo check-dataset`` and print its summary.

The training and evaluation steps are appended as the pipeline grows.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from progeo.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo_out")
    preset: str = "default"
    seed: int = 0
    workers: int | None = None
    quick: bool = False

    @property
    def world_dir(self) -> Path:
        return Path(self.out_dir) / f"world-{self.preset}-seed{self.seed}"


@dataclass
class DemoResult:
    world_dir: Path
    reports: list = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)


def _world_matches(world_dir: Path, preset: str, seed: int) -> bool:
    from progeo.data.synthetic.writer import GENERATOR

    try:
        manifest = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (manifest.get("generator") == GENERATOR and manifest.get("preset") == preset
            and manifest.get("seed") == seed)


def prepare_world(cfg: DemoConfig) -> Path:
    """Generate the demo's world, or reuse a complete one made earlier with the same settings."""
    from progeo.data.synthetic import generate_world

    world = cfg.world_dir
    if _world_matches(world, cfg.preset, cfg.seed):
        log.info("reusing the synthetic world in %s", world)
        return world
    log.info("generating the %r synthetic world (seed %d) in %s", cfg.preset, cfg.seed, world)
    generate_world(world, cfg.preset, cfg.seed, workers=cfg.workers, overwrite=world.exists(), progress=True)
    return world


def validate_world(world: Path) -> list:
    """Check the train, val and test folders as ``progeo check-dataset`` does; return the reports."""
    from progeo.data.checks import check_dataset

    reports = [check_dataset(world / "train", "train")]
    for split in ("val", "test"):
        reports.append(check_dataset(world / split, "test"))
    return reports


def run_demo(cfg: DemoConfig) -> DemoResult:
    t0 = time.perf_counter()
    world = prepare_world(cfg)
    result = DemoResult(world_dir=world)
    result.seconds["world"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    result.reports = validate_world(world)
    result.seconds["validate"] = time.perf_counter() - t1
    if not result.ok:
        bad = "; ".join(f"{r.path}: {r.problems[0]}" for r in result.reports if not r.ok)
        raise DatasetError(f"the synthetic world in {world} failed validation ({bad}); "
                           f"delete {world} and run the demo again")
    return result
