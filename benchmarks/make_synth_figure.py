"""Make docs/synthetic_views.png: a labelled grid of synthetic street views.

Row 1: one view per city. Row 2: one place under different conditions (day, dusk, night, fog,
rain, snow). Row 3: heavy occluders, a facade repainted between capture years, a view 1 m /
5 degrees away from a reference and one 200 m away.

    .venv/bin/python benchmarks/make_synth_figure.py [--out docs/synthetic_views.png] [--size 128]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from progeo.data.synthetic import CITY_STYLES, Camera, Conditions, city_map, render_batch, render_view
from progeo.data.synthetic.cities import COLOUR_RGB


def _pose(city: str, along: float = 0.5, index: int = 0, turn: float = 30.0):
    segs = [s for s in city_map(city).segments if s.routable and s.length >= 30]
    seg = segs[index % len(segs)]
    x, y = seg.point(seg.start + along * seg.length)
    heading = (90.0 if seg.axis == "x" else 0.0) + turn
    return float(x), float(y), heading, seg


def _repainted_pose(city: str, size: int):
    """A pose whose main building is repainted in a clearly different colour between 2012 and 2024."""
    cmap = city_map(city)
    T = cmap.buildings
    for i in range(200):
        x, y, h, _ = _pose(city, 0.3 + 0.01 * (i % 40), i, turn=80.0)
        _, infos = render_batch(cmap, [Camera(x, y, h)], Conditions(), 32)
        b = infos[0].buildings[:1]
        if b and 2012 < T.repaint_year[b[0]] <= 2024:
            change = np.abs(COLOUR_RGB[T.colour_a[b[0]]] - COLOUR_RGB[T.colour_b[b[0]]]).sum()
            if change > 0.6:
                return x, y, h
    return _pose(city)[:3]


def panels(size: int):
    out = []
    for city in CITY_STYLES:
        x, y, h, _ = _pose(city, 0.45, 2)
        out.append((f"{city}, {CITY_STYLES[city].country}", render_view(city, x, y, h, image_size=size)))
    x, y, h, _ = _pose("Oslo", 0.4, 1, turn=20.0)
    for label, cond in (
        ("Oslo: summer day", Conditions(month=7)),
        ("dusk", Conditions(time="dusk", month=9, season="autumn")),
        ("night", Conditions(time="night")),
        ("fog", Conditions(weather="fog", season="autumn", month=10)),
        ("rain", Conditions(weather="rain", season="autumn", month=10)),
        ("winter, snow", Conditions(weather="overcast", season="winter", month=1, snow=True)),
    ):
        out.append((label, render_view("Oslo", x, y, h, image_size=size, conditions=cond, noise_seed=1)))
    x, y, h, _ = _pose("Lisbon", 0.5, 3, turn=10.0)
    out.append(("Lisbon: heavy occluders",
                render_view("Lisbon", x, y, h, image_size=size, conditions=Conditions(occluders="heavy"), noise_seed=2)))
    rx, ry, rh = _repainted_pose("Porto", size)
    out.append(("Porto 2012", render_view("Porto", rx, ry, rh, image_size=size, conditions=Conditions(year=2012))))
    out.append(("Porto 2024 (repainted)",
                render_view("Porto", rx, ry, rh, image_size=size, conditions=Conditions(year=2024))))
    x, y, h, seg = _pose("Marrakesh", 0.4, 5, turn=35.0)
    dx, dy = (1.0, 0.0) if seg.axis == "x" else (0.0, 1.0)
    out.append(("Marrakesh: reference", render_view("Marrakesh", x, y, h, image_size=size)))
    out.append(("1 m, 5 deg away", render_view("Marrakesh", x + dx, y + dy, h + 5, image_size=size)))
    fx, fy = (x - 200.0 * np.sign(x or 1), y) if seg.axis == "x" else (x, y - 200.0 * np.sign(y or 1))
    out.append(("200 m away", render_view("Marrakesh", fx, fy, h, image_size=size)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/synthetic_views.png")
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = panels(args.size)
    cols = 6
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.1, rows * 2.3), dpi=110)
    for ax, (label, img) in zip(axes.ravel(), items):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("progeo synthetic world: street views rendered by the numpy ray caster (128 px)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    plt.close(fig)
    from PIL import Image

    with Image.open(args.out) as im:  # a 256-colour palette keeps the file small
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
