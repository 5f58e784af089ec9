"""The run engine on a toy stage (a few linear-regression steps): stop and resume give the uninterrupted
run's weights, a NaN stops before the update with the last good state kept, a signal saves the state at
the current step and says how to continue, a finished run is left alone."""

from __future__ import annotations

import csv
import os
import signal

import pytest
import torch

from progeo.config import Stage1Config
from progeo.train.engine import TrainingStage, run_training
from progeo.train.interrupt import Interrupted
from progeo.train.loop import TrainingDiverged, torch_generator
from progeo.train.run_dir import load_state


class Toy(TrainingStage):
    """Epochs of 5 steps of 4 samples; the global RNG adds noise, so an exact resume needs the RNG states."""

    kind, name, outputs = "stage1", "toy", ("toy.txt",)
    poison: tuple[int, int] | None = None  # the (epoch, step) whose loss is NaN
    signal_at: tuple[int, int] | None = None  # the (epoch, step) during which SIGTERM arrives

    def __init__(self, ctx):
        super().__init__(ctx)
        self.x = torch.randn(20, 3, generator=torch_generator(1))
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5])
        self.w = torch.zeros(3, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.w], lr=0.1)

    def steps_in_epoch(self, epoch):
        return 5

    def begin_epoch(self, epoch, step):
        self.order = torch.randperm(20, generator=torch_generator(self.cfg.seed, epoch))

    def train_step(self, epoch, step, finite):
        idx = self.order[step * 4 : (step + 1) * 4]
        loss = ((self.x[idx] @ self.w - self.y[idx] + 0.1 * torch.randn(4)) ** 2).mean()
        if (epoch, step) == self.poison:
            loss = loss * float("nan")
        if (epoch, step) == self.signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        value = finite(loss)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": value}

    def end_epoch(self, epoch, means):
        self.run.log("epochs", {"epoch": epoch, "loss": means["loss"]}, step=epoch)

    def state_dict(self):
        return {"w": self.w.detach(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, saved):
        with torch.no_grad():
            self.w.copy_(saved["w"])
        self.optimizer.load_state_dict(saved["optimizer"])

    def finish(self, stopped):
        if not stopped:
            (self.run.path / "toy.txt").write_text(repr(self.w.tolist()))
        return self.w.detach().clone(), list(self.ctx.progress.losses), stopped

    @classmethod
    def finished(cls, folder, metrics):
        return "already finished"


def _cfg(out, **kw) -> Stage1Config:
    return Stage1Config(train_set="unused", out_dir=str(out), epochs=3, device="cpu", progress=False,
                        tensorboard=False, checkpoint_every=2, **kw)


def _resume(out) -> Stage1Config:
    return _cfg(out, resume=str(out))


def _state(out) -> dict:
    return load_state(out / "checkpoints" / "state.safetensors")


def test_stopped_and_resumed_run_equals_the_uninterrupted_run(tmp_path):
    w_full, losses_full, _ = run_training(Toy, _cfg(tmp_path / "full"))
    killed = tmp_path / "killed"
    assert run_training(Toy, _cfg(killed, stop_after=8))[2]  # epoch 1, step 3; last checkpoint at epoch 1, step 2
    assert (_state(killed)["epoch"], _state(killed)["step"]) == (1, 2)
    w, losses, stopped = run_training(Toy, _resume(killed))
    assert not stopped and torch.equal(w, w_full) and losses == losses_full
    assert (_state(killed)["epoch"], _state(killed)["step"]) == (3, 0)
    with open(killed / "epochs.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "2"]
    files = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    assert run_training(Toy, _resume(killed)) == "already finished"
    assert {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()} == files


def test_a_nan_loss_stops_before_the_update_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    monkeypatch.setattr(Toy, "poison", (1, 3))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at toy epoch 1 step 3.*kept in .*state"):
        run_training(Toy, _cfg(tmp_path / "run"))
    state = _state(tmp_path / "run")
    assert (state["epoch"], state["step"]) == (1, 2) and torch.isfinite(state["w"]).all()


def test_a_signal_saves_the_state_at_the_current_step_and_gives_the_resume_command(tmp_path, monkeypatch):
    w_full, _, _ = run_training(Toy, _cfg(tmp_path / "full"))
    run = tmp_path / "run"
    monkeypatch.setattr(Toy, "signal_at", (1, 0))
    with pytest.raises(Interrupted) as info:
        run_training(Toy, _cfg(run))
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert "the training state at epoch 1, step 1 is saved" in str(info.value)
    assert info.value.command == f"progeo train stage1 --resume {run}"
    assert (_state(run)["epoch"], _state(run)["step"]) == (1, 1)
    monkeypatch.setattr(Toy, "signal_at", None)
    assert torch.equal(run_training(Toy, _resume(run))[0], w_full)


def test_a_state_written_before_the_engine_still_resumes_exactly(tmp_path):
    """Stage-2 states counted the position in "iteration"s, pretraining and stage-1 states summed the loss in "total"."""
    from progeo.train.run_dir import save_state

    w_full, losses_full, _ = run_training(Toy, _cfg(tmp_path / "full"))
    run = tmp_path / "run"
    run_training(Toy, _cfg(run, stop_after=8))
    state = _state(run)
    state["iteration"], state["total"] = state.pop("step"), state.pop("sums")["loss"]
    save_state(run / "checkpoints" / "state.safetensors", state)
    w, losses, _ = run_training(Toy, _resume(run))
    assert torch.equal(w, w_full) and losses == losses_full
