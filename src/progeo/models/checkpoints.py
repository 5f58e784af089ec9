"""The saved-model format: save, read back, and load a GeoLocalizer.

A saved model is a folder with

- ``config.json``: architecture (name and full open_clip config), descriptor head,
  ``fc_output_dim``, image size, preprocessing (mean, std, interpolation, resize mode) and
  training provenance (free-form);
- ``model.safetensors``: the tensors (``backbone.*``, ``aggregation.*``), float32, with the same
  config JSON in its metadata;

or a single ``.safetensors`` file whose metadata key ``progeo_config`` holds the config JSON.
Both are written atomically and contain no pickle. Loading checks every tensor name and shape
against the architecture and says what differs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from progeo.device import resolve_device
from progeo.errors import CheckpointError, ConfigError, reading
from progeo.io import atomic_path, write_json_atomic
from progeo.models.geolocalizer import GeoLocalizer, ModelConfig
from progeo.models.state_dicts import check_state_dict

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "progeo_config"
#: What to do about a damaged saved model (an index folder's copy advises rebuilding the index instead).
MODEL_FIX = ("restore it from a copy or save it again (the training run that wrote it, or "
             "`progeo import-checkpoint` for an imported checkpoint)")


def save_model(model: GeoLocalizer, path: str | Path, *, provenance: dict | None = None,
               single_file: bool | None = None) -> Path:
    """Save ``model`` to a folder (default) or one ``.safetensors`` file (path ending so, or ``single_file``).

    ``provenance`` (e.g. training config, epoch, recalls) is merged into the saved config's.
    """
    from safetensors.torch import save_file

    path = Path(path)
    single = path.suffix == ".safetensors" if single_file is None else single_file
    if provenance:
        model.config.provenance = {**model.config.provenance, **provenance}
    config_json = json.dumps(model.config.to_dict())
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    target = path if single else path / WEIGHTS_NAME
    if not single:
        path.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: config_json})
    if not single:
        write_json_atomic(path / CONFIG_NAME, model.config.to_dict())
    log.info("saved %s model (%d-d descriptors) to %s", model.config.arch, model.descriptor_dim, path)
    return path


def _weights_and_config(path: Path) -> tuple[Path, dict]:
    from safetensors import safe_open

    if path.is_dir():
        weights, cfg_file = path / WEIGHTS_NAME, path / CONFIG_NAME
        if not weights.is_file() or not cfg_file.is_file():
            have = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
            raise CheckpointError(f"{path} is not a saved progeo model: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                                  f"(found: {have}); import foreign checkpoints with `progeo import-checkpoint`")
        with reading(cfg_file, "model config", MODEL_FIX, CheckpointError):
            return weights, _as_dict(json.loads(cfg_file.read_text(encoding="utf-8")))
    if not path.exists():
        raise CheckpointError(f"no saved model at {path}; give a model folder or .safetensors file "
                              "(to start from a CLIP backbone use progeo.build_model('RN50:openai'))")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a progeo model (.safetensors file or folder); "
                              "convert a PyTorch checkpoint with `progeo import-checkpoint`")
    with reading(path, "saved model", MODEL_FIX, CheckpointError):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise CheckpointError(f"{path} has no '{METADATA_KEY}' metadata, so it is not a single-file progeo model; "
                              "convert it with `progeo import-checkpoint`")
    with reading(path, "saved model", MODEL_FIX, CheckpointError):
        return path, _as_dict(json.loads(meta[METADATA_KEY]))


def _as_dict(raw) -> dict:
    if not isinstance(raw, dict):
        raise TypeError(f"the config is a JSON {type(raw).__name__}, not an object")
    return raw


def read_model_config(path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of a saved model (folder or single file), without loading tensors."""
    path = Path(path)
    _, raw = _weights_and_config(path)
    try:
        return ModelConfig.from_dict(raw)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GeoLocalizer:
    """Load a saved model, ready for ``describe`` (eval mode, on ``device``).

    Raises CheckpointError when the tensors do not match the architecture of the config
    (missing / unexpected keys, wrong shapes: listed with their shapes).
    """
    from safetensors.torch import load_file

    path = Path(path)
    weights, raw = _weights_and_config(path)
    try:
        config = ModelConfig.from_dict(raw)
        model = GeoLocalizer.from_config(config)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    with reading(weights, "saved model weights", MODEL_FIX, CheckpointError):
        state = load_file(str(weights), device="cpu")
    check_state_dict(model.state_dict(), state,
                     f"saved model {path} (config: {config.arch}, head {config.head}, fc_output_dim {config.fc_output_dim})")
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval()


def load_model_or_backbone(ref: str | Path, device: str | torch.device = "cpu", image_size=None,
                           weights=None) -> GeoLocalizer:
    """A model by reference, resolved by lookup, not by the string's shape: an existing file or
    folder is a saved model; else a backbone the registry knows, ``ARCH[:TAG]`` (``ViT-B/16:openai``,
    ``tiny-vit``), is a new, not trained model (``weights``: a local CLIP weights file); else one
    error says what was tried. ``image_size`` (height, width): the input size; a saved ViT keeps its own.
    """
    from progeo.models.geolocalizer import build_model
    from progeo.models.registry import split_backbone_spec

    path = Path(ref).expanduser()
    if path.exists():
        model = load_model(path, device)
        if image_size and tuple(image_size) != tuple(model.image_size) and model.family != "resnet":
            raise ConfigError(f"{ref} is a ViT model of {model.image_size[0]}x{model.image_size[1]} px: it cannot "
                              f"take {image_size[0]}x{image_size[1]} images; drop --resize")
        return model
    try:
        split_backbone_spec(str(ref))
    except ConfigError as exc:
        raise ConfigError(f"no saved model or backbone {str(ref)!r}: tried a saved model at {path.absolute()} (no such "
                          f"file or folder) and the backbone registry ({exc})") from None
    return build_model(str(ref), image_size=tuple(image_size) if image_size else None, weights=weights,
                       device=device).eval()
