"""progeo: CLIP-based visual geo-localization (ProGEO retrieval, IM2City/GEM classification).

The public API is ``__all__`` (README "Python API"). Names whose modules load torch, open_clip or
faiss are imported on first use, so that ``import progeo`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from progeo.data.test_sets import TestSet

__version__ = "0.1.0"

_LAZY = {
    "build_model": "progeo.models.geolocalizer", "GeoLocalizer": "progeo.models.geolocalizer",
    "load_model": "progeo.models.checkpoints", "save_model": "progeo.models.checkpoints",
    "load_model_or_backbone": "progeo.models.checkpoints",
    "describe": "progeo.eval.descriptors",
    "evaluate": "progeo.eval.evaluate", "EvalConfig": "progeo.eval.evaluate",
    "Index": "progeo.eval.index", "IndexConfig": "progeo.eval.search",
    "Localizer": "progeo.eval.localizer",
    "run_zeroshot": "progeo.geo", "ZeroShotConfig": "progeo.geo", "fit_probe": "progeo.geo",
    "evaluate_probe": "progeo.geo", "run_probe_fit": "progeo.geo", "ProbeFitConfig": "progeo.geo",
    "run_probe_eval": "progeo.geo", "ProbeEvalConfig": "progeo.geo", "gem_metrics": "progeo.geo",
    "run_gem_report": "progeo.geo",
}

__all__ = sorted(["TestSet", *_LAZY])

if TYPE_CHECKING:  # for type checkers and IDEs
    from progeo.eval.descriptors import describe
    from progeo.eval.evaluate import EvalConfig, evaluate
    from progeo.eval.index import Index
    from progeo.eval.localizer import Localizer
    from progeo.eval.search import IndexConfig
    from progeo.geo import (ProbeEvalConfig, ProbeFitConfig, ZeroShotConfig, evaluate_probe, fit_probe, gem_metrics,
                            run_gem_report, run_probe_eval, run_probe_fit, run_zeroshot)
    from progeo.models.checkpoints import load_model, load_model_or_backbone, save_model
    from progeo.models.geolocalizer import GeoLocalizer, build_model


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'progeo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*__all__, "__version__"]
