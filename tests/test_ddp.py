"""Stage 2 under torch.distributed: 2 CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from progeo.config import LossSettings, ModelConfig, OptimSettings, Stage2Config


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # real processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg: Stage2Config, out: str) -> None:
    from safetensors.torch import save_file

    from progeo.train.stage2 import run_stage2

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = run_stage2(cfg)
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in result.model.state_dict().items()}
        tensors.update({f"classifier.{g}": c.weight.detach().contiguous() for g, c in enumerate(result.classifiers)})
        save_file(tensors, os.path.join(out, f"rank{rank}.safetensors"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_processes_train_identical_weights(tiny_world, tmp_path):
    from safetensors.torch import load_file

    from progeo.data.groups import GroupsConfig
    from progeo.data.train_sets import TrainSet

    TrainSet.open(tiny_world / "train", GroupsConfig(), cache_dir=tmp_path / "groups")  # cache built once, not raced
    run = tmp_path / "run"
    cfg = Stage2Config(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), model=ModelConfig("tiny-vit"),
                       loss=LossSettings(text_loss=False), out_dir=str(run), image_size=64, groups_num=2, epochs=2,
                       iterations_per_epoch=3, batch_size=8, optim=OptimSettings(lr=1e-4), freeze_trans=2, device="cpu", progress=False,
                       tensorboard=False, groups_cache_dir=str(tmp_path / "groups"))
    mp.spawn(_worker, args=(_free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("classifier.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    from progeo.losses import CosFace

    torch.manual_seed(cfg.seed)  # the classifiers are built right after this seeding: they did train
    groups = TrainSet.open(tiny_world / "train", GroupsConfig(), cache_dir=tmp_path / "groups").first_groups(2)
    for g, group in enumerate(groups):
        assert not torch.equal(CosFace(64, len(group)).weight, a[f"classifier.{g}"])
    assert (run / "best_model" / "model.safetensors").is_file() and (run / "metrics.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 2


def _refused_worker(rank: int, port: int, cfg: Stage2Config, out: str) -> None:
    from progeo.errors import FolderInUseError
    from progeo.train.stage2 import run_stage2

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        run_stage2(cfg)
    except FolderInUseError as exc:
        with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
            f.write(str(exc))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(120)
def test_a_locked_run_folder_stops_every_rank(tiny_world, tmp_path):
    """Only rank 0 takes the run folder's lock; when another process holds it, rank 0 is refused with the
    holder's PID and tells rank 1, which stops too instead of waiting at the first barrier."""
    import subprocess
    import sys

    run = tmp_path / "run"
    hold = "import sys, time\nfrom progeo.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n" \
           "    print('locked', flush=True)\n    time.sleep(600)\n"
    import progeo

    src = os.path.dirname(os.path.dirname(os.path.abspath(progeo.__file__)))
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        cfg = Stage2Config(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), model=ModelConfig("tiny-vit"),
                           loss=LossSettings(text_loss=False), out_dir=str(run), device="cpu", progress=False, tensorboard=False)
        mp.spawn(_refused_worker, args=(_free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    finally:
        holder.kill()
        holder.communicate()
    assert f"PID {holder.pid}" in (tmp_path / "rank0.txt").read_text()
    assert "rank 0 says why" in (tmp_path / "rank1.txt").read_text()
