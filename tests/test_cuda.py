"""The CUDA paths (mixed precision, device placement, NCCL) on a real GPU; skipped without one.

CI has no GPU, so these run where one is lent (``pytest tests/test_cuda.py`` on a CUDA machine).
Each checks behaviour against the CPU run of the same code, not just that it does not crash.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from progeo.config import LossSettings, ModelConfig, OptimSettings, PretrainConfig, Stage1Config, Stage2Config

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.slow]


def test_amp_is_on_for_cuda_and_describe_matches_cpu():
    from progeo.device import amp_dtype
    from progeo.models import build_model

    assert amp_dtype("cuda") in (torch.bfloat16, torch.float16) and amp_dtype("cpu") is None
    torch.manual_seed(0)
    model = build_model("tiny-rn").eval()
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    on_cpu = model.describe(images, device="cpu")
    on_gpu = model.describe(images, device="cuda")
    assert model.device.type == "cpu" and on_gpu.shape  # described on the GPU, the model left where it was == on_cpu.shape and np.isfinite(on_gpu).all()
    cosine = np.sum(on_cpu * on_gpu, 1) / np.linalg.norm(on_cpu, axis=1) / np.linalg.norm(on_gpu, axis=1)
    assert cosine.min() > 0.98, cosine  # bf16/fp16 autocast moves descriptors only slightly


def test_eval_on_cuda_gives_the_cpu_recalls(tiny_world):
    from progeo.eval.evaluate import EvalConfig, evaluate
    from progeo.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny-vit").eval()
    cpu = evaluate(model, tiny_world / "test", cfg=EvalConfig(device="cpu", progress=False))[0].recall.recalls
    gpu = evaluate(model, tiny_world / "test", cfg=EvalConfig(device="cuda", progress=False))[0].recall.recalls
    assert cpu.keys() == gpu.keys() and all(abs(cpu[n] - gpu[n]) <= 3.0 for n in cpu), (cpu, gpu)  # a few ties may flip under mixed precision


def test_pretrain_stage1_stage2_on_cuda_with_amp(tiny_world, tmp_path):
    import progeo
    from progeo.train.pretrain import run_pretrain
    from progeo.train.stage1 import run_stage1
    from progeo.train.stage2 import run_stage2

    pre_cfg = PretrainConfig(world=str(tiny_world), backbone="tiny-rn", out_dir=str(tmp_path / "pre"), epochs=3,
                             batch_size=64, lr=3e-3, device="cuda", progress=False, tensorboard=False)
    assert run_pretrain(dataclasses.replace(pre_cfg, stop_after=30)).stopped  # killed in epoch 2 ...
    pre = run_pretrain(dataclasses.replace(pre_cfg, resume=pre_cfg.out_dir))  # ... and resumed on the GPU
    assert len(pre.epoch_losses) == 3 and pre.epoch_losses[-1] < pre.epoch_losses[0]
    assert pre.zeroshot_accuracy > pre.chance
    s1_cfg = Stage1Config(train_set=str(tiny_world / "train"), model=ModelConfig("tiny-rn", str(pre.checkpoint)),
                          out_dir=str(tmp_path / "s1"), epochs=8, groups_num=1, device="cuda", progress=False,
                          tensorboard=False, feature_cache_dir=str(tmp_path / "features"),
                          groups_cache_dir=str(tmp_path / "groups"))
    assert run_stage1(dataclasses.replace(s1_cfg, stop_after=3)).stopped  # killed early ...
    stage1 = run_stage1(dataclasses.replace(s1_cfg, resume=s1_cfg.out_dir))  # ... and resumed
    assert len(stage1.epoch_losses) == 8
    losses = stage1.epoch_losses
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    cfg = Stage2Config(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), model=ModelConfig("tiny-rn", str(pre.checkpoint)),
                       prompts=str(stage1.prompts_path), out_dir=str(tmp_path / "s2"),
                       image_size=64, groups_num=1, epochs=3, iterations_per_epoch=8, batch_size=16, optim=OptimSettings(lr=1e-3),
                       device="cuda", progress=False, tensorboard=False, groups_cache_dir=str(tmp_path / "groups"),
                       test_set=str(tiny_world / "test"))
    killed = run_stage2(dataclasses.replace(cfg, stop_after=12))  # "killed" in epoch 1, then resumed on the GPU
    assert killed.stopped and killed.epochs_done == 1
    result = run_stage2(dataclasses.replace(cfg, resume=str(killed.run_dir)))
    hist = result.val_history
    assert not result.stopped and all(np.isfinite(h["train_loss"]) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert next(result.model.parameters()).device.type == "cuda"
    model = progeo.load_model(result.best_model, device="cpu")  # a GPU-trained model loads on a CPU machine
    assert next(model.parameters()).device.type == "cpu"
    assert model.describe(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, model.descriptor_dim)
    assert hist[-1]["epoch"] == 2 and "queries" in result.test_recalls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, port: int, cfg: Stage2Config, out: str) -> None:
    from progeo.train.stage2 import run_stage2

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("nccl", rank=rank, world_size=1)
    try:
        result = run_stage2(cfg)
        with open(os.path.join(out, "nccl_ok.txt"), "w") as f:
            f.write(f"{result.val_history[-1]['train_loss']}\n")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.timeout(300)
def test_stage2_under_nccl_on_one_gpu(tiny_world, tmp_path):
    """The DistributedDataParallel path with the NCCL backend (one GPU: world size 1)."""
    assert torch.distributed.is_nccl_available()
    cfg = Stage2Config(train_set=str(tiny_world / "train"), val_set=str(tiny_world / "val"), model=ModelConfig("tiny-vit"),
                       loss=LossSettings(text_loss=False), out_dir=str(tmp_path / "run"), image_size=64, groups_num=2,
                       epochs=2, iterations_per_epoch=4, batch_size=8, optim=OptimSettings(lr=1e-4), freeze_trans=2, device="cuda",
                       progress=False, tensorboard=False, groups_cache_dir=str(tmp_path / "groups"))
    mp.spawn(_nccl_worker, args=(_free_port(), cfg, str(tmp_path)), nprocs=1, join=True)
    assert np.isfinite(float((tmp_path / "nccl_ok.txt").read_text()))
    assert (tmp_path / "run" / "best_model").is_dir()
