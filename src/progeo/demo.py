"""``progeo demo``: the main job of ``make demo``, the whole pipeline on the synthetic world.

1. generate the synthetic world (or reuse it when its manifest matches preset and seed) and
   validate it with the checks of ``progeo check-dataset``;
2. pretrain a tiny CLIP on the world's captions (the paper starts from an aligned CLIP);
3. evaluate the pretrained image encoder zero-shot (no place training);
4. ProGEO stage 1 (prompts) and stage 2 (image encoder with the prompts);
5. the CosPlace baseline: stage 2 with ``text_loss=False``, same seed and budget;
6. evaluate every model on the test set's day, night and occlusion queries;
7. GEM: zero-shot and linear-probe city / country classification with the pretrained CLIP.

Everything lands in ``out_dir``: ``report.md`` / ``report.json`` (the recall table and the GEM
table), ``recalls.png``, prediction grids of ProGEO, and every run folder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from progeo.errors import DatasetError
from progeo.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

QUERY_FOLDERS = ("queries", "queries_night", "queries_occlusion")
METHODS = ("zero-shot (pretrained CLIP)", "CosPlace (no text loss)", "ProGEO (stage 1 + 2)")


@dataclass(frozen=True)
class DemoBudget:
    """Training budget of the demo; the paper's budgets stay the config defaults.

    Chosen by measurement on the synthetic world (2-core CPU): N = 2 gives 8 groups of ~80-110
    classes (the paper's N = 5 splits this small world into 42 groups of 6-30 classes, which
    overfit); hue jitter is off because the paper's 0.5 erases the facade colours this world's
    places are told apart by; the encoder lr is higher than the paper's 1e-5, which suits
    640k iterations from OpenAI CLIP, not ~1k from a tiny pretrained one.

    The text loss, measured on val R@1 (150 queries: one query is 0.7 points; the test R@1 of one
    setting moves up to 8 points between seeds): at 12 stage-2 epochs ProGEO's val R@1 (mean of
    the last 4 epochs) was CosPlace's +2.8 on average over seeds 0-2 (+2.9, -0.1, +5.7), with
    test differences within seed noise; text-loss weights 3 and 10 (SPEC: 1) and 240 or 480
    stage-1 epochs (better prompts: ~45 % instead of ~30 % class retrieval) gave no better val.
    16 stage-2 epochs (val was still rising at 12) raise the best val R@1 of both rows by ~3
    points for ~30 s more per row, so both rows get them; there ProGEO's val edge is gone
    (seeds 0, 1: ProGEO 57.3, 55.3; CosPlace 57.3, 58.0).
    """

    preset: str
    backbone: str = "tiny-rn"
    pretrain_epochs: int = 4
    groups_N: int = 2
    groups_num: int = 8
    stage1_epochs: int = 48
    stage2_image_size: int = 96
    stage2_epochs: int = 16
    iterations_per_epoch: int = 100
    batch_size: int = 32
    stage2_lr: float = 1e-3
    augmentation: tuple = (("hue", 0.0), ("brightness", 0.6), ("contrast", 0.6), ("saturation", 0.3),
                           ("crop_scale", (0.7, 1.0)))
    threads: int = 1  # tiny models gain nothing from more torch threads, which stall on shared cores


BUDGETS = {
    False: DemoBudget(preset="default"),
    True: DemoBudget(preset="tiny", pretrain_epochs=3, groups_num=4, stage1_epochs=8, stage2_image_size=64,
                     stage2_epochs=2, iterations_per_epoch=25),
}


@dataclass
class DemoConfig:
    out_dir: Path = Path("demo_out")
    preset: str | None = None  # None: the budget's preset
    seed: int = 0
    workers: int | None = None
    quick: bool = False
    device: str = "auto"
    gem: bool = True

    @property
    def budget(self) -> DemoBudget:
        return BUDGETS[bool(self.quick)]

    @property
    def world_preset(self) -> str:
        return self.preset or self.budget.preset

    @property
    def world_dir(self) -> Path:
        return Path(self.out_dir) / f"world-{self.world_preset}-seed{self.seed}"


@dataclass
class DemoResult:
    world_dir: Path
    reports: list = field(default_factory=list)
    recalls: dict = field(default_factory=dict)  # method -> query folder -> {N: recall %}
    gem: dict = field(default_factory=dict)
    pretrain_zeroshot: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    markdown: str = ""

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
    if _world_matches(world, cfg.world_preset, cfg.seed):
        log.info("reusing the synthetic world in %s", world)
        return world
    log.info("generating the %r synthetic world (seed %d) in %s", cfg.world_preset, cfg.seed, world)
    generate_world(world, cfg.world_preset, cfg.seed, workers=cfg.workers, overwrite=world.exists(), progress=True)
    return world


def validate_world(world: Path) -> list:
    """Check the train, val and test folders as ``progeo check-dataset`` does; return the reports."""
    from progeo.data.checks import check_dataset

    reports = [check_dataset(world / "train", "train")]
    for split in ("val", "test"):
        reports.append(check_dataset(world / split, "test"))
    bad = [r for r in reports if not r.ok]
    if bad:
        raise DatasetError(f"the synthetic world in {world} failed validation ({bad[0].path}: {bad[0].problems[0]}); "
                           f"delete {world} and run the demo again")
    return reports


def _evaluate(model, world: Path, name: str, device: str, out: Path | None = None):
    from progeo.eval.evaluate import EvalConfig, evaluate
    from progeo.eval.results import write_results

    results = evaluate(model, world / "test", QUERY_FOLDERS, EvalConfig(device=device, batch_size=128, progress=False),
                       model_name=name)
    if out is not None:
        write_results(results, out, run={"model": name}, grids=8, grid_k=5)
    return {r.queries_folder: {int(k): float(v) for k, v in r.recall.recalls.items()} for r in results}


def _format_table(recalls: dict) -> str:
    lines = ["| method | queries | R@1 | R@5 | R@10 | R@20 |", "|---|---|---|---|---|---|"]
    for method, folders in recalls.items():
        for folder, rec in folders.items():
            lines.append(f"| {method} | {folder} | " + " | ".join(f"{rec.get(n, float('nan')):.1f}"
                                                                  for n in (1, 5, 10, 20)) + " |")
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> DemoResult:
    from progeo.train.loop import cpu_threads

    from progeo.locks import folder_lock

    with cpu_threads(cfg.budget.threads if str(cfg.device) in ("auto", "cpu") else None), \
            folder_lock(cfg.out_dir, flag="--out"):  # one demo per folder
        return _run_demo(cfg)


def _run_demo(cfg: DemoConfig) -> DemoResult:
    from progeo.config import PretrainConfig, Stage1Config, Stage2Config
    from progeo.config_files import config_from_dict
    from progeo.device import resolve_device
    from progeo.models import build_model, load_model
    from progeo.train.pretrain import run_pretrain
    from progeo.train.stage1 import run_stage1
    from progeo.train.stage2 import run_stage2

    out, b, device = Path(cfg.out_dir), cfg.budget, str(resolve_device(cfg.device))
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.seconds[name] = round(now - clock, 1)
        clock = now
        log.info("demo: %s done in %.1f s", name, result.seconds[name])

    world = prepare_world(cfg)
    result = DemoResult(world_dir=world)
    lap("world")
    result.reports = validate_world(world)
    lap("validate")

    # the demo redoes every run in its own folder: replacing the previous demo's runs is intended
    common = dict(device=device, seed=cfg.seed, progress=True, tensorboard=False, threads=b.threads, overwrite=True)
    pre = run_pretrain(PretrainConfig(world=str(world), backbone=b.backbone, out_dir=str(out / "pretrain"),
                                      epochs=b.pretrain_epochs, **common))
    result.pretrain_zeroshot = {"city_top1": pre.zeroshot_accuracy, "before": pre.zeroshot_before, "chance": pre.chance}
    lap("pretrain")

    model_fields = dict(backbone=b.backbone, weights=str(pre.checkpoint))
    zero = build_model(b.backbone, weights=str(pre.checkpoint), image_size=b.stage2_image_size,
                       normalization="imagenet", device=device)
    result.recalls[METHODS[0]] = _evaluate(zero, world, METHODS[0], device)
    lap("eval zero-shot")

    groups = dict(N=b.groups_N, groups_num=b.groups_num)
    s1 = run_stage1(config_from_dict(Stage1Config, dict(train_set=str(world / "train"), out_dir=str(out / "stage1"),
                                                        epochs=b.stage1_epochs, image_size=64, **groups,
                                                        **model_fields, **common)))
    lap("stage 1")

    stage2 = dict(train_set=str(world / "train"), val_set=str(world / "val"), image_size=b.stage2_image_size,
                  epochs=b.stage2_epochs, iterations_per_epoch=b.iterations_per_epoch, batch_size=b.batch_size,
                  lr=b.stage2_lr, **dict(b.augmentation), **groups, **model_fields, **common)
    for method, run, extra in ((METHODS[1], "cosplace", {"text_loss": False}),
                               (METHODS[2], "progeo", {"prompts": str(s1.prompts_path)})):
        s2 = run_stage2(config_from_dict(Stage2Config, dict(out_dir=str(out / f"stage2-{run}"), **stage2, **extra)))
        lap(f"stage 2 {run}")
        model = load_model(s2.best_model or s2.last_model, device)
        result.recalls[method] = _evaluate(model, world, method, device,
                                           out / "eval" / run if run == "progeo" else None)
        lap(f"eval {run}")

    if cfg.gem:
        from progeo.geo.gem_report import run_gem_report

        result.gem = run_gem_report(world, pre.checkpoint, b.backbone, out / "gem", device=device)
        lap("gem")
    _write_report(cfg, result, out)
    return result


def _write_report(cfg: DemoConfig, result: DemoResult, out: Path) -> None:
    from progeo.eval.visualize import plot_recall_curves

    table = _format_table(result.recalls)
    parts = [f"# progeo demo ({cfg.world_preset} synthetic world, seed {cfg.seed})", "",
             "Recall@N (%) on the test set, positives within 25 m:", "", table, ""]
    if result.gem:
        parts += ["GEM city / country classification of the test images:", "", result.gem["markdown"], ""]
    parts += ["Seconds per step: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()), ""]
    result.markdown = "\n".join(parts)
    write_text_atomic(out / "report.md", result.markdown)
    write_json_atomic(out / "report.json", {
        "preset": cfg.world_preset, "seed": cfg.seed, "budget": asdict(cfg.budget), "recalls": result.recalls,
        "pretrain_zeroshot": result.pretrain_zeroshot, "seconds": result.seconds,
        "gem": {k: v for k, v in result.gem.items() if k != "markdown"} if result.gem else {}})
    curves = {f"{m.split(' (')[0]} / {f}": {int(n): v for n, v in rec.items()}
              for m, folders in result.recalls.items() for f, rec in folders.items()}
    plot_recall_curves(curves, out / "recalls.png", title="progeo demo: recall@N")
