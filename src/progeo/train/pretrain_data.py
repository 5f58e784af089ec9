"""The data of CLIP pretraining on a synthetic world: captions, held-out city labels, zero-shot accuracy.

``WORLD/captions.tsv``: ``path<TAB>caption`` per image; ``WORLD/labels.csv``:
``path,lat,lon,city,country``; paths are relative to the world folder.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from progeo.device import autocast
from progeo.errors import DatasetError, reading

HELD_OUT = ("val/", "test/")
REGENERATE = "regenerate the world with `progeo synth`"


def read_captions(world: Path, prefix: str = "train/") -> tuple[list[str], list[str]]:
    """(absolute paths, captions) of the world's images whose path starts with ``prefix``."""
    path = world / "captions.tsv"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; pretraining needs a synthetic world made by `progeo synth` "
                           "(captions.tsv: one 'path<TAB>caption' line per image)")
    paths, captions = [], []
    with reading(path, "captions file", REGENERATE), open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            rel, sep, text = line.partition("\t")
            if not sep or not text.strip():
                raise DatasetError(f"{path} line {n}: expected 'path<TAB>caption', got {line[:80]!r}")
            if rel.startswith(prefix):
                paths.append(str(world / rel))
                captions.append(text.strip())
    if not paths:
        raise DatasetError(f"{path} has no caption for images under {prefix!r}; regenerate the world")
    return paths, captions


def read_city_labels(world: Path) -> tuple[list[str], np.ndarray, list[tuple[str, str]], list[str]]:
    """Held-out images: (absolute paths, city label ids, [(city, country)] classes, folder per image)."""
    path = world / "labels.csv"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; it lists path,lat,lon,city,country of the world's images")
    with reading(path, "labels file", REGENERATE), open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("path", "").startswith(HELD_OUT)]
    missing = {"path", "city", "country"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise DatasetError(f"{path} has no val/test rows with path, city and country columns; regenerate the world")
    classes = sorted({(r["city"], r["country"]) for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[(r["city"], r["country"])] for r in rows], dtype=np.int64)
    folders = [r["path"].rsplit("/", 1)[0] if r["path"].startswith("test/") else "val" for r in rows]
    return [str(world / r["path"]) for r in rows], labels, classes, folders


def zeroshot_accuracy(model, tokenizer, images: torch.Tensor, labels: np.ndarray, classes, template: str,
                      mean, std, device, batch_size: int = 256) -> np.ndarray:
    """Per-image correctness (bool array) of zero-shot classification into ``classes``, by GEM's zero-shot
    rule (:mod:`progeo.geo.zeroshot`: prompt-ensembled class texts, cosine similarity, best class)."""
    from progeo.geo.zeroshot import ensemble_text_features, zeroshot_scores

    model.eval()
    texts = [template.format(city=c, country=k) for c, k in classes]
    with torch.no_grad():
        t = model.encode_text(tokenizer(texts).to(device)).float().cpu().numpy()
        feats = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float() / 255.0
            x = (x - torch.tensor(mean, device=device).view(1, 3, 1, 1)) / torch.tensor(std, device=device).view(1, 3, 1, 1)
            with autocast(device):
                feats.append(model.encode_image(x).float().cpu())
    model.train()
    scores = zeroshot_scores(torch.cat(feats).numpy(), ensemble_text_features(t[:, None, :]))
    return scores.argmax(1) == labels
