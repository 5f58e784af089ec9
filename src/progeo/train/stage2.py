"""ProGEO stage 2 (SPEC 1.5): train the image encoder with CosFace and the stage-1 prompts.

Per group, a CosFace classifier with its own Adam; epoch ``e`` trains group ``e mod groups_num``
and only that group's classifier (and its optimizer state) lives on the device. The loss is
``CE(CosFace(desc), y) + w_text * LS-CE(desc @ T_g^T, y) [+ w_tri * soft triplet]`` where ``T_g``
are the text features of all classes of group g, computed once from the frozen prompts.
``text_loss=False`` is plain CosPlace on the same backbone (no prompts needed). The groups are
progeo's first ``groups_num``, or, for prompts imported from the authors (which name their
groups, numbered otherwise), the first ``groups_num`` the prompts file names.

After every epoch: recall on the val set; the best (R@1) and the last model are saved in the
models' format (``RUN/best_model``, ``RUN/last_model``; ``progeo.load_model`` reads them) and the
resumable training state (model, optimizers, all classifiers, grad scaler, best recall). At the
end, the best model's test recalls. Under ``torchrun`` the image encoder runs in
DistributedDataParallel, classifier gradients are averaged by hand, each process trains on its
slice of every global batch, and only rank 0 writes. Everything around the iterations (run folder,
resume, stop_after, signals, NaN stop) is the run engine's (:mod:`progeo.train.engine`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from progeo.config import Stage2Config, eval_config
from progeo.device import autocast
from progeo.losses import label_smoothed_cross_entropy, soft_triplet_loss
from progeo.train import ddp
from progeo.train.class_batches import EpochBatches, epoch_loader
from progeo.train.engine import RunContext, TrainingStage, run_training
from progeo.train.loop import make_grad_scaler, optimizer_to, torch_generator
from progeo.train.stage2_setup import Stage2Parts, build_parts, evaluate_model

log = logging.getLogger(__name__)

BEST_NAME, LAST_NAME = "best_model", "last_model"


@dataclass
class Stage2Result:
    run_dir: Path
    best_model: Path | None
    last_model: Path | None
    best_val_r1: float
    best_epoch: int
    val_history: list[dict] = field(default_factory=list)
    test_recalls: dict[str, dict] = field(default_factory=dict)
    epochs_done: int = 0
    iterations_done: int = 0  # in this process call
    stopped: bool = False  # stop_after ended the run early (as if it had been killed)
    seconds: float = 0.0
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (last weights)
    classifiers: list = field(default_factory=list, repr=False)  # per-group CosFace classifiers (CPU)
    already_finished: bool = False  # resumed a finished run: nothing was trained or written


def run_stage2(cfg: Stage2Config) -> Stage2Result:
    """Train (or, with ``cfg.resume``, continue) a stage-2 run; see the module docstring."""
    cfg.check()
    return run_training(Stage2, cfg)


class Stage2(TrainingStage):
    """Stage 2 as a :class:`~progeo.train.engine.TrainingStage`: epoch ``e`` trains group ``e mod groups_num``."""

    kind, name, unit, distributed = "stage2", "stage 2", "iteration", True
    outputs, tables = (BEST_NAME, LAST_NAME), ("epochs", "iterations")

    def __init__(self, ctx: RunContext):
        super().__init__(ctx)
        self.parts: Stage2Parts = build_parts(self.cfg, self.device, self.info)
        self.part = ddp.rank_slice(self.cfg.batch_size, self.info)
        self.scaler = make_grad_scaler(self.device, self.cfg.amp)
        self.model = None  # parts.model, in DistributedDataParallel under torchrun (wrapped once restored)
        self.best_r1, self.best_epoch, self.history = -1.0, -1, []

    def steps_in_epoch(self, epoch: int) -> int:
        return self.cfg.iterations_per_epoch

    def begin_epoch(self, epoch: int, step: int) -> None:
        cfg, parts, device, g = self.cfg, self.parts, self.device, epoch % self.cfg.groups_num
        if self.model is None:
            self.model = ddp.wrap_ddp(parts.model, self.info, device)
        self.classifier, self.classifier_optimizer = parts.classifiers[g], parts.classifier_optimizers[g]
        self.classifier.to(device)
        optimizer_to(self.classifier_optimizer, device)
        self.text = parts.text_features[g].to(device) if parts.text_features else None
        parts.model.train()
        dataset = EpochBatches(parts.groups[g], parts.source, cfg.seed, epoch, step, cfg.iterations_per_epoch,
                               cfg.batch_size, self.part)
        self.batches = iter(epoch_loader(dataset, cfg.num_workers, device.type == "cuda"))

    def train_step(self, epoch, step, finite) -> dict[str, float]:
        cfg, parts, device = self.cfg, self.parts, self.device
        images, labels = next(self.batches)
        x = parts.augment(images.to(device, non_blocking=True), torch_generator(cfg.seed, epoch, step, 7),
                          part=self.part, total=cfg.batch_size)
        y = labels.to(device)
        with autocast(device, enabled=cfg.amp):
            desc = self.model(x)
        losses, lc = {"cosface": F.cross_entropy(self.classifier(desc, y), y)}, cfg.loss
        if self.text is not None:
            losses["text"] = lc.text_loss_weight * label_smoothed_cross_entropy(desc.float() @ self.text.t(), y,
                                                                                lc.label_smoothing)
        if lc.triplet_weight > 0:
            losses["triplet"] = lc.triplet_weight * soft_triplet_loss(desc.float(), y, lc.triplet_mining)
        loss = sum(losses.values())
        mean_loss = finite(loss)
        parts.optimizer.zero_grad(set_to_none=True)
        self.classifier_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        ddp.all_reduce_mean_grads(self.classifier.parameters(), self.info)
        self.scaler.step(parts.optimizer)
        self.scaler.step(self.classifier_optimizer)
        self.scaler.update()
        values = {k: float(v.detach()) for k, v in losses.items()}
        if (step + 1) % max(1, cfg.iterations_per_epoch // 20) == 0:
            at = epoch * cfg.iterations_per_epoch + step + 1
            self.run.log("iterations", {"step": at, "epoch": epoch, "iteration": step + 1, "loss": mean_loss,
                                            **values}, step=at)
        return {**values, "loss": mean_loss}

    def end_epoch(self, epoch: int, means: dict[str, float]) -> None:
        from progeo.models.checkpoints import save_model

        cfg, parts, run, info, device = self.cfg, self.parts, self.run, self.info, self.device
        self.classifier.to("cpu")
        optimizer_to(self.classifier_optimizer, "cpu")
        self.batches = None
        row = {"epoch": epoch, "group": epoch % cfg.groups_num, **{f"train_{k}": v for k, v in means.items()}}
        recalls = evaluate_model(parts.model, parts.val_set, cfg, device, parts.val_images) if info.is_main else {}
        r1 = ddp.broadcast_float(float(recalls.get("R@1", -1.0)), info, device)
        row.update({f"val_{k}": v for k, v in recalls.items() if k.startswith("R@")})
        self.history.append(row)
        if info.is_main:
            provenance = {"stage": "stage2", "epoch": epoch, "val": recalls, "text_loss": cfg.loss.text_loss}
            save_model(parts.model, run.path / LAST_NAME, provenance=provenance)
            if r1 > self.best_r1:
                save_model(parts.model, run.path / BEST_NAME, provenance=provenance)
        if r1 > self.best_r1:
            self.best_r1, self.best_epoch = r1, epoch
        run.log("epochs", {"step": epoch, **row}, step=epoch)
        log.info("epoch %d: loss %.4f, val R@1 %.2f (best %.2f at epoch %d)", epoch, means.get("loss", float("nan")),
                 r1, self.best_r1, self.best_epoch)

    def state_dict(self) -> dict:
        parts = self.parts
        return {"best_r1": self.best_r1, "best_epoch": self.best_epoch, "history": self.history,
                "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
                "classifiers": [c.state_dict() for c in parts.classifiers],
                "classifier_optimizers": [o.state_dict() for o in parts.classifier_optimizers],
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, saved: dict) -> None:
        parts, cfg, at = self.parts, self.cfg, self.ctx.progress
        parts.model.load_state_dict(saved["model"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        if len(saved["classifiers"]) != len(parts.classifiers):
            raise ValueError(f"{len(saved['classifiers'])} classifiers saved, {len(parts.classifiers)} groups now")
        for c, s in zip(parts.classifiers, saved["classifiers"]):
            c.load_state_dict(s)
        for o, s in zip(parts.classifier_optimizers, saved["classifier_optimizers"]):
            o.load_state_dict(s)
            optimizer_to(o, "cpu")
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        optimizer_to(parts.optimizer, self.device)
        self.best_r1, self.best_epoch = float(saved["best_r1"]), int(saved["best_epoch"])
        self.history = list(saved.get("history", []))
        self.run.drop_rows_after("iterations", "step", at.epoch * cfg.iterations_per_epoch + at.step)

    def finish(self, stopped: bool) -> Stage2Result:
        cfg, run, info, at = self.cfg, self.run, self.info, self.ctx.progress
        result = Stage2Result(run.path, run.path / BEST_NAME if self.best_epoch >= 0 else None,
                              run.path / LAST_NAME if at.epoch > 0 else None, self.best_r1, self.best_epoch,
                              self.history, epochs_done=at.epoch, iterations_done=at.session_steps,
                              stopped=stopped, model=self.parts.model, classifiers=self.parts.classifiers)
        if not stopped and info.is_main and cfg.test_set and result.best_model is not None:
            result.test_recalls = _test(cfg, result.best_model, self.device)
        ddp.barrier(info)
        result.seconds = time.perf_counter() - self.ctx.started
        run.write_metrics({"stage": "stage2", "text_loss": cfg.loss.text_loss, "best_val_R@1": self.best_r1,
                           "best_epoch": self.best_epoch, "val_history": self.history, "test": result.test_recalls,
                           "seconds": result.seconds, "stopped_early": stopped, "world_size": info.world_size})
        return result

    @classmethod
    def finished(cls, folder: Path, metrics: dict) -> Stage2Result:
        history = list(metrics.get("val_history", []))
        return Stage2Result(folder, folder / BEST_NAME, folder / LAST_NAME, float(metrics.get("best_val_R@1", -1.0)),
                            int(metrics.get("best_epoch", -1)), history, dict(metrics.get("test", {})),
                            epochs_done=len(history), already_finished=True)


def _test(cfg, best: Path, device) -> dict[str, dict]:
    """Test recalls of the best model on every test query folder (the database described once)."""
    from progeo.eval.evaluate import evaluate
    from progeo.models.checkpoints import load_model

    model = load_model(best, device=device)
    results = evaluate(model, cfg.test_set, cfg.test_queries, eval_config(cfg, device))
    out = {}
    for r in results:
        log.info("test %s: %s", r.queries_folder, ", ".join(f"R@{n} {v:.1f}" for n, v in r.recall.recalls.items()))
        out[r.queries_folder] = r.recall.as_dict()
    return out


__all__ = ["run_stage2", "Stage2Result"]
