"""Stage-2 training throughput on a tiny model: where the time of one iteration goes.

Runs the stage-2 step (class sampling, image loading, batched on-device augmentation, forward,
CosFace + text loss, backward, two Adam steps) for a number of iterations with the images

- ``disk``: decoded from the JPEG files for every batch, in the main process;
- ``disk+N workers``: decoded in N DataLoader worker processes (``--workers``);
- ``memory``: preloaded once as a uint8 tensor (what small training sets use);

and prints images/s and the time per iteration of each phase.

    .venv/bin/python benchmarks/bench_train.py                     # tiny world made in a temp folder
    .venv/bin/python benchmarks/bench_train.py --world /tmp/worlds/default --image-size 96 --batch-size 32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _time_mode(parts, cfg, mode: str, iterations: int, workers: int, device: torch.device) -> dict:
    import torch.nn.functional as F

    from progeo.losses import label_smoothed_cross_entropy
    from progeo.train.class_batches import EpochBatches, ImageSource, PreloadedImages, epoch_loader
    from progeo.train.loop import torch_generator

    group = parts.groups[0]
    if mode == "memory":
        source = PreloadedImages(group.images, cfg.image_size, group.all_images()[0], progress=False)
    else:
        source = ImageSource(group.images, cfg.image_size)
    classifier = parts.classifiers[0].to(device)
    cls_opt = parts.classifier_optimizers[0]
    text = parts.text_features[0].to(device) if parts.text_features else None
    data = EpochBatches(group, source, cfg.seed, 0, 0, iterations + 2, cfg.batch_size, slice(0, cfg.batch_size))
    loader = iter(epoch_loader(data, workers, False))
    parts.model.train()
    times = {"load": 0.0, "augment": 0.0, "forward+loss": 0.0, "backward+step": 0.0}
    for it in range(iterations + 2):  # two warm-up iterations are not counted
        t0 = time.perf_counter()
        images, labels = next(loader)
        t1 = time.perf_counter()
        x = parts.augment(images.to(device), torch_generator(cfg.seed, 0, it, 7))
        y = labels.to(device)
        t2 = time.perf_counter()
        desc = parts.model(x)
        loss = F.cross_entropy(classifier(desc, y), y)
        if text is not None:
            loss = loss + label_smoothed_cross_entropy(desc.float() @ text.t(), y, 0.1)
        t3 = time.perf_counter()
        parts.optimizer.zero_grad(set_to_none=True)
        cls_opt.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
        cls_opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t4 = time.perf_counter()
        if it >= 2:
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[key] += dt
    total = sum(times.values())
    return {"images_per_s": iterations * cfg.batch_size / total, "ms_per_it": 1000 * total / iterations,
            **{k: 1000 * v / iterations for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", help="synthetic world folder (default: a tiny world made in a temp folder)")
    parser.add_argument("--backbone", default="tiny-rn")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from progeo.config import LossSettings, ModelConfig, Stage2Config
    from progeo.device import resolve_device
    from progeo.train.ddp import DistInfo
    from progeo.train.stage2_setup import build_parts

    tmp = tempfile.TemporaryDirectory()
    world = Path(args.world) if args.world else Path(tmp.name) / "world"
    if not args.world:
        from progeo.data.synthetic import generate_world

        generate_world(world, "tiny", seed=0, workers=2, progress=False)
    device = resolve_device(args.device)
    cfg = Stage2Config(train_set=str(world / "train"), val_set=str(world / "val"), model=ModelConfig(args.backbone),
                       loss=LossSettings(text_loss=False), image_size=args.image_size, batch_size=args.batch_size, groups_num=1,
                       freeze_trans=2, device=str(device), preload_images=False, progress=False,
                       groups_cache_dir=str(Path(tmp.name) / "groups"))
    parts = build_parts(cfg, device, DistInfo())
    modes = [("disk", 0), (f"disk+{args.workers} workers", args.workers), ("memory", 0)]
    rows = [(name, _time_mode(parts, cfg, "memory" if name == "memory" else "disk", args.iterations, w, device))
            for name, w in modes]
    print(f"stage-2 step, {args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.iterations} iterations, "
          f"device {device}, {torch.get_num_threads()} torch threads")
    header = ["images from", "images/s", "ms/it", "load", "augment", "forward+loss", "backward+step"]
    print("  ".join(f"{h:>14}" for h in header))
    for name, r in rows:
        cells = [name, f"{r['images_per_s']:.0f}", f"{r['ms_per_it']:.0f}", f"{r['load']:.0f}", f"{r['augment']:.0f}",
                 f"{r['forward+loss']:.0f}", f"{r['backward+step']:.0f}"]
        print("  ".join(f"{c:>14}" for c in cells))
    print("(phase columns in ms per iteration)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
