"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A synthetic world of the ``tiny`` preset (3 cities, 64 px, ~1.8 k images), built once per session.

    Layout: see :mod:`progeo.data.synthetic` (train/, val/, test/, *_images_paths.txt,
    captions.tsv, labels.csv, world.json). Treat it as read-only.
    """
    from progeo.data.synthetic import generate_world

    out = tmp_path_factory.mktemp("synthetic") / "tiny_world"
    generate_world(out, "tiny", seed=0, workers=2)
    return out
