"""Synthetic world speed: images/s on one core (render only, render + JPEG) and preset wall times.

    .venv/bin/python benchmarks/bench_synth.py [--presets tiny,small,default] [--images 480]

Rendering is measured in this process with numpy/BLAS/torch threads limited to 1, on training
panoramas (12 views of one capture per call, as the generator does) across the six cities. Preset
times are end to end (plan, render, encode, write, index files) with all cores (``--workers``);
"CPU seconds" (all processes) divided by the number of cores is the wall time on an idle machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from progeo.data.synthetic import PRESETS, city_map, generate_world  # noqa: E402
from progeo.data.synthetic.occluders import make_occluders  # noqa: E402
from progeo.data.synthetic.plan import plan_train  # noqa: E402
from progeo.data.synthetic.render import render_batch  # noqa: E402


def _captures(count_images: int):
    preset = PRESETS["default"]
    caps = []
    for city in preset.cities:
        caps.extend(plan_train(preset, city_map(city), 0)[: max(1, count_images // 12 // len(preset.cities))])
    return caps


def bench_render(size: int, images: int) -> tuple[float, float, float]:
    """(render-only img/s wall, render+encode img/s wall, render+encode img/s CPU time)."""
    caps = _captures(images)
    render_batch(city_map(caps[0].city), list(caps[0].cams), caps[0].cond, size)  # warm-up
    rendered = []
    t0 = time.perf_counter()
    for cap in caps:
        occ = make_occluders(np.random.default_rng(cap.seed), city_map(cap.city), cap.cams, cap.cond.occluders)
        imgs, _ = render_batch(city_map(cap.city), list(cap.cams), cap.cond, size, seed=cap.seed % 2**31, occluders=occ)
        rendered.append(imgs)
    t_render = time.perf_counter() - t0
    n = sum(len(x) for x in rendered)
    t0, c0 = time.perf_counter(), time.process_time()
    for cap in caps:
        occ = make_occluders(np.random.default_rng(cap.seed), city_map(cap.city), cap.cams, cap.cond.occluders)
        imgs, _ = render_batch(city_map(cap.city), list(cap.cams), cap.cond, size, seed=cap.seed % 2**31, occluders=occ)
        for img in imgs:
            Image.fromarray(img).save(io.BytesIO(), format="JPEG", quality=90)
    t_both, c_both = time.perf_counter() - t0, time.process_time() - c0
    return n / t_render, n / t_both, n / c_both


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the rendering workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="tiny,small,default")
    parser.add_argument("--images", type=int, default=480, help="images per render measurement")
    parser.add_argument("--workers", type=int, default=None, help="processes for the presets (default: all cores)")
    args = parser.parse_args()
    for name in PRESETS["default"].cities:
        city_map(name)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"rendering on one core ({args.images} images, 12-view panoramas, six cities; "
          f"{os.cpu_count()} cores, load average {load:.1f} before the run)")
    print(f"{'size':>6}  {'render img/s':>13}  {'render+JPEG img/s':>18}  {'(CPU time) img/s':>17}")
    for size in (64, 128):
        r, b, c = bench_render(size, args.images)
        print(f"{size:>4}px  {r:>13.0f}  {b:>18.0f}  {c:>17.0f}")
    presets = [p for p in args.presets.split(",") if p]
    if presets:
        workers = args.workers or os.cpu_count() or 1
        print(f"\npresets end to end ({workers} workers)")
        print(f"{'preset':>8}  {'images':>7}  {'size':>5}  {'seconds':>8}  {'img/s':>6}  {'CPU seconds':>11}")
        for name in presets:
            with tempfile.TemporaryDirectory() as tmp:
                cpu0 = _cpu_seconds()
                s = generate_world(Path(tmp) / "w", name, seed=0, workers=workers)
                cpu = _cpu_seconds() - cpu0
                print(f"{name:>8}  {s.total_images:>7,d}  {s.image_size:>5}  {s.seconds:>8.1f}  "
                      f"{s.total_images / s.seconds:>6.0f}  {cpu:>11.1f}")


if __name__ == "__main__":
    main()
