"""Architecture names: open_clip's model registry plus progeo's tiny test architectures.

Any open_clip architecture can be named (``open_clip.list_models()``). Names are matched
case-insensitively and ``/`` is read as ``-``, so the paper's spellings ``ViT-B/16`` and
``ViT-B/32`` work. A backbone *spec* may carry its weights after a colon: ``RN50:openai``,
``ViT-B-32:laion2b_s34b_b79k`` or ``RN50:/path/to/RN50.pt``.

The tiny architectures (``tiny-rn``: a ModifiedResNet with attention pooling; ``tiny-vit``: a
VisionTransformer) are ordinary open_clip model configs shipped in ``model_configs/`` and
registered with :func:`open_clip.add_model_config`; their text tower is a real (small) CLIP text
transformer with a 32-token context, used with open_clip's own tokenizer.
"""

from __future__ import annotations

import copy
import difflib
import threading
from pathlib import Path

from progeo.errors import ConfigError

#: The four backbones of the ProGEO paper and their published descriptor sizes.
PAPER_BACKBONES: dict[str, int] = {"RN50": 1024, "RN101": 512, "ViT-B-16": 512, "ViT-B-32": 512}

#: Small architectures for tests, the demo and pretraining from scratch.
TINY_ARCHITECTURES: tuple[str, ...] = ("tiny-rn", "tiny-vit")

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")

_registered = False
_lock = threading.Lock()


def register_model_configs() -> None:
    """Add progeo's model configs to open_clip's registry (idempotent)."""
    global _registered
    if _registered:
        return
    with _lock:
        if not _registered:
            import open_clip

            open_clip.add_model_config(MODEL_CONFIG_DIR)
            _registered = True


def list_architectures() -> list[str]:
    """Every architecture name that can be built (open_clip's and the tiny ones)."""
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def canonical_arch(name: str) -> str:
    """The registry spelling of an architecture name (``vit-b/16`` -> ``ViT-B-16``).

    Raises ConfigError with the closest known names when the architecture does not exist.
    """
    wanted = name.strip().replace("/", "-")
    known = list_architectures()
    if wanted in known:
        return wanted
    by_lower = {k.lower(): k for k in known}
    if wanted.lower() in by_lower:
        return by_lower[wanted.lower()]
    close = difflib.get_close_matches(wanted, known, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `progeo models` to list them."
    raise ConfigError(
        f"unknown backbone architecture {name!r}: not an open_clip model config; {hint} "
        f"(the paper's backbones are {', '.join(PAPER_BACKBONES)}; tests use {', '.join(TINY_ARCHITECTURES)}; "
        f"a saved model is given by its folder or .safetensors path, which does not exist here)"
    )


def split_backbone_spec(spec: str) -> tuple[str, str | None]:
    """Split ``ARCH[:PRETRAINED]`` into the canonical architecture and the tag or file (or None)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty backbone name; give e.g. RN50:openai, ViT-B/16:openai or tiny-rn")
    arch, sep, pretrained = spec.partition(":")
    pretrained = pretrained.strip() if sep else None
    return canonical_arch(arch), (pretrained or None)


def architecture_config(arch: str) -> dict:
    """A private copy of the open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``...)."""
    import open_clip

    arch = canonical_arch(arch)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:  # pragma: no cover - canonical_arch already checked the registry
        raise ConfigError(f"open_clip has no model config for {arch!r}")
    return copy.deepcopy(cfg)


def vision_family(model_cfg: dict) -> str:
    """``"resnet"`` (ModifiedResNet), ``"vit"`` (VisionTransformer) or ``"other"`` for a model config."""
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return "other"
    return "resnet" if isinstance(vision.get("layers"), (list, tuple)) else "vit"
