"""Benchmark: CosPlace classes and groups of an SF-XL-sized train list (5.6 M names).

Generates (once, in --workdir) a paths file of SF-XL-style names: panoramas along a street
network of a 10 x 10 km area of UTM zone 10S (San Francisco), several 30-degree crops per
panorama (12 possible headings), several captures per street cell. Then, in a fresh
subprocess each, measures

* cold: read the paths file + parse + build classes/groups + write the cache, then open the
  first 8 training groups (touch their arrays, make one path per group);
* warm: the same with the cache present.

and prints wall times and the subprocess's peak RSS (ru_maxrss). Usage::

    .venv/bin/python benchmarks/bench_groups.py [--images 5600000] [--workdir /tmp/progeo_bench_groups]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SF_EAST, SF_NORTH, SIDE = 543_000.0, 4_173_000.0, 10_000.0


def simulate(n_images: int, seed: int = 0, spacing: float = 500.0, sigma: float = 1.0):
    """Positions, headings and panorama of ``n_images`` crops along a street network."""
    rng = np.random.default_rng(seed)
    # a grid of streets, each a little rotated, every `spacing` metres, with uneven coverage
    lines = np.arange(spacing / 2, SIDE, spacing)
    base = np.concatenate([lines, lines])
    angle = np.radians(np.concatenate([np.zeros_like(lines), np.full_like(lines, 90.0)]) + rng.normal(0, 5.0, 2 * lines.size))
    weights = rng.lognormal(0.0, sigma, base.size)
    panos = int(n_images / 6 * 1.02)  # each of the 12 crop headings kept with probability 1/2
    street = rng.choice(base.size, size=panos, p=weights / weights.sum())
    t = rng.uniform(-SIDE / 2, SIDE / 2, panos)
    side = base[street] - SIDE / 2 + rng.normal(0, 3.0, panos)  # lateral position (both sidewalks)
    vertical = street >= lines.size
    a = angle[street]
    # horizontal streets run east at north = side; vertical ones run north at east = side
    along_e, along_n = np.cos(a) * t - np.sin(a) * side, np.sin(a) * t + np.cos(a) * side
    east = SF_EAST + SIDE / 2 + np.where(vertical, along_n, along_e)
    north = SF_NORTH + SIDE / 2 + np.where(vertical, along_e, along_n)
    yaw = np.degrees(np.where(vertical, np.pi / 2 - a, a)) + rng.normal(0, 5.0, panos)
    pano_of, crop = np.nonzero(rng.random((panos, 12)) < 0.5)
    pano_of, crop = pano_of[:n_images], crop[:n_images]
    heading = np.mod(np.round(yaw[pano_of] + 30 * crop), 360).astype(int)
    return rng, east, north, pano_of, heading


def generate(n_images: int, workdir: Path, seed: int = 0) -> Path:
    """Write ``workdir/train_images_paths.txt`` (and the few files the sample check opens)."""
    import utm

    from progeo.data.image_lists import sample_indices

    paths_file = workdir / "train_images_paths.txt"
    stamp = workdir / "generated.json"
    if stamp.exists() and json.loads(stamp.read_text()) == {"images": n_images, "seed": seed}:
        return paths_file
    rng, east, north, pano_of, heading = simulate(n_images, seed)
    panos = east.size
    lat, lon = utm.to_latlon(east, north, 10, "S")
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
    pano_ids = alphabet[rng.integers(0, 64, (panos, 22))].view("S22").ravel().astype(str)
    dates = rng.integers(2013, 2020, panos) * 100 + rng.integers(1, 13, panos)
    e_s, n_s = [f"{v:010.2f}" for v in east], [f"{v:010.2f}" for v in north]
    la_s, lo_s = [f"{v:09.5f}" for v in lat], [f"{v:.5f}" for v in lon]
    folder = [f"{int(v)}" for v in (north - SF_NORTH) // 500]
    out = []
    for p, h in zip(pano_of.tolist(), heading.tolist()):
        out.append(f"{folder[p]}/@{e_s[p]}@{n_s[p]}@10@S@{la_s[p]}@{lo_s[p]}@{pano_ids[p]}@@{h}@@@@{dates[p]}@@.jpg\n")
    workdir.mkdir(parents=True, exist_ok=True)
    paths_file.write_text("".join(out))
    for i in sample_indices(len(out), 16):  # the entries read_image_list checks must exist
        f = workdir / "train" / out[i].strip()
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    stamp.write_text(json.dumps({"images": n_images, "seed": seed}))
    return paths_file


def worker(workdir: Path, cache_dir: Path) -> None:
    """Timed work, in its own process: prints one JSON line."""
    from progeo.data.groups import GroupsConfig, load_or_build_groups
    from progeo.data.image_lists import read_image_list
    from progeo.data.train_sets import TrainSet

    t0 = time.perf_counter()
    images = read_image_list(workdir / "train")
    t1 = time.perf_counter()
    groups = load_or_build_groups(images, GroupsConfig(), cache_dir=cache_dir)
    t2 = time.perf_counter()
    train = TrainSet(images, groups)
    touched = 0
    for g in train.first_groups(8):
        idx, labels = g.all_images()
        touched += int(idx.sum() % 7) + int(labels.size) + int(g.images_per_class.sum())
        _ = g.sample(0, np.random.default_rng(0))
    t3 = time.perf_counter()
    ipc = groups.images_per_class
    print(json.dumps({
        "read_list_s": t1 - t0, "groups_s": t2 - t1, "load_8_groups_s": t3 - t2, "total_s": t3 - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "images": len(images), "classes_before_filtering": groups.classes_before_filtering,
        "classes": groups.classes_num, "groups": groups.groups_num, "images_kept": int(groups.image_indices.size),
        "ipc": [int(ipc.min()), float(np.median(ipc)), int(ipc.max())],
        "group0_classes": len(train.group(0)), "touched": touched,
    }))


def run_worker(workdir: Path, cache_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--workdir", str(workdir), "--cache-dir", str(cache_dir)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"worker failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5_600_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/progeo_bench_groups"))
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cache_dir = args.cache_dir or args.workdir / "cache"
    if args.worker:
        worker(args.workdir, cache_dir)
        return
    if args.generate:
        generate(args.images, args.workdir)
        return
    t = time.perf_counter()
    # generated in a child: the workers must not inherit a large parent (ru_maxrss survives exec)
    subprocess.run([sys.executable, __file__, "--generate", "--images", str(args.images),
                    "--workdir", str(args.workdir)], check=True)
    paths_file = args.workdir / "train_images_paths.txt"
    print(f"list: {paths_file} ({paths_file.stat().st_size / 1e6:.0f} MB, ready in {time.perf_counter() - t:.1f} s)")
    shutil.rmtree(cache_dir, ignore_errors=True)
    cold = run_worker(args.workdir, cache_dir)
    warm = run_worker(args.workdir, cache_dir)
    cache_mb = sum(f.stat().st_size for f in cache_dir.rglob("*.npz")) / 1e6
    print(f"\nimages {cold['images']:,}  classes {cold['classes_before_filtering']:,} -> {cold['classes']:,} kept"
          f" ({cold['images_kept']:,} images)  groups {cold['groups']}  images/class min/median/max "
          f"{cold['ipc'][0]}/{cold['ipc'][1]:g}/{cold['ipc'][2]}  group 0: {cold['group0_classes']:,} classes"
          f"  cache {cache_mb:.0f} MB\n")
    print(f"{'phase':<34}{'cold (no cache)':>17}{'warm (cache hit)':>18}")
    for key, label in (("read_list_s", "read paths file (s)"), ("groups_s", "parse + build / load groups (s)"),
                       ("load_8_groups_s", "open 8 training groups (s)"), ("total_s", "total (s)"),
                       ("peak_rss_mb", "peak RSS of the subprocess (MB)")):
        print(f"{label:<34}{cold[key]:>17.2f}{warm[key]:>18.2f}")
    print("\ntargets: total <= 10 s, peak RSS <= 2048 MB (ru_maxrss of each worker process)")


if __name__ == "__main__":
    main()
