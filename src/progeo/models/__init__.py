"""CLIP models for geo-localization: backbones, descriptor heads, prompts, saving and loading.

Imported lazily (``from progeo.models import GeoLocalizer`` loads torch/open_clip on first use).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GeoLocalizer": "geolocalizer", "ModelConfig": "geolocalizer", "build_model": "geolocalizer",
    "ClipModel": "backbones", "PreprocessConfig": "backbones", "load_clip": "backbones",
    "ClipTextEncoder": "text_encoder",
    "PromptLearner": "prompts", "save_prompts": "prompts", "load_prompts": "prompts",
    "save_model": "checkpoints", "load_model": "checkpoints", "read_model_config": "checkpoints",
    "import_checkpoint": "importers", "import_prompts": "importers",
    "freeze_visual": "freezing",
    "encode_images": "inference", "encode_texts": "inference",
    "GeM": "heads", "L2Norm": "heads", "GeMHead": "heads", "ClipEmbeddingHead": "heads",
    "PAPER_BACKBONES": "registry", "TINY_ARCHITECTURES": "registry", "list_architectures": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
