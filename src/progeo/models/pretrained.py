"""Where pretrained CLIP weights come from: open_clip's tag registry, the local caches, or a file.

A tag (``RN50:openai``) is looked up in open_clip's pretrained registry, which gives a download
URL and/or a Hugging Face hub id. The weights are taken from the local caches when present
(``~/.cache/clip`` for URLs, the Hugging Face cache for hub ids). Otherwise they are downloaded,
unless the machine is offline (``offline=True``, ``PROGEO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, or
the host does not answer): then a CheckpointError says which file to fetch and how to pass it
(``--weights PATH``) instead of a long retry loop and a stack trace.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from progeo.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class PretrainedSource:
    """A resolved weights file and what the registry says about it."""

    path: Path
    tag: str | None = None
    quick_gelu: bool | None = None  # None: unknown (a bare file)
    preprocess: dict = field(default_factory=dict)  # mean/std/interpolation/resize_mode from the tag


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return offline
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("PROGEO_OFFLINE", "HF_HUB_OFFLINE"))


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_parts(cfg: dict) -> tuple[str, str] | None:
    hub = cfg.get("hf_hub") or ""
    if not hub:
        return None
    repo, filename = os.path.split(hub)  # "org/repo/" -> no filename: the default one
    return repo, filename or HF_WEIGHTS_NAME


def _hub_filenames(filename: str) -> list[str]:
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def cached_weights(cfg: dict, cache_dir: str | Path | None = None) -> Path | None:
    """The local copy of a pretrained tag's weights, if any cache holds it."""
    hub = _hub_parts(cfg)
    if hub is not None:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub is an open_clip dependency
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = hub
            for name in _hub_filenames(filename):
                found = try_to_load_from_cache(repo, name, cache_dir=str(cache_dir) if cache_dir else None)
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found)
    url = cfg.get("url") or ""
    if url:
        candidate = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
        if candidate.is_file():
            return candidate
    return None


def missing_weights_message(arch: str, tag: str, cfg: dict, reason: str) -> str:
    """What to download and how to pass it, for a tag whose weights are not available."""
    where = []
    if cfg.get("url"):
        where.append(cfg["url"])
    hub = _hub_parts(cfg)
    if hub is not None:
        repo, filename = hub
        names = _hub_filenames(filename)
        alt = f" (or '{names[1]}')" if len(names) > 1 else ""
        where.append(f"the Hugging Face hub repo '{repo}' file '{names[0]}'{alt}: "
                     f"https://huggingface.co/{repo}/resolve/main/{names[0]}")
    return (
        f"pretrained weights {arch}:{tag} are not in the local cache and {reason}. Download "
        + " or ".join(where)
        + f" on a machine with network access, then pass the file with --weights PATH "
        f"(Python: weights=PATH), keeping --backbone {arch}:{tag} for its preprocessing"
    )


def resolve_pretrained(
    arch: str,
    pretrained: str | None,
    *,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
) -> PretrainedSource | None:
    """Find the weights file for ``arch`` given a tag and/or an explicit file; None for random init."""
    import open_clip

    tag_cfg: dict = {}
    tag = None
    if pretrained and open_clip.get_pretrained_cfg(arch, pretrained):
        tag, tag_cfg = pretrained, open_clip.get_pretrained_cfg(arch, pretrained)
    elif pretrained and weights is None:
        if os.path.isfile(pretrained):
            weights = pretrained
        elif pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained:
            raise CheckpointError(f"weights file {pretrained} does not exist; check the path")
        else:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            hint = f"known tags: {', '.join(tags)}" if tags else "open_clip has no pretrained weights for it; pass a file"
            raise ConfigError(f"unknown pretrained tag {pretrained!r} for {arch}; {hint}")
    elif pretrained and weights is not None:
        raise ConfigError(f"unknown pretrained tag {pretrained!r} for {arch} (with --weights, the tag is optional)")

    source = PretrainedSource(
        path=Path(),
        tag=tag,
        quick_gelu=bool(tag_cfg.get("quick_gelu", False)) if tag else None,
        preprocess={k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg},
    )
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist; check --weights")
        source.path = path
        return source
    if tag is None:
        return None

    found = cached_weights(tag_cfg, cache_dir)
    if found is not None:
        log.info("using cached weights %s for %s:%s", found, arch, tag)
        source.path = found
        return source
    if _is_offline(offline):
        raise CheckpointError(missing_weights_message(arch, tag, tag_cfg, "this machine is set to offline mode"))
    host = "huggingface.co" if _hub_parts(tag_cfg) else urlparse(tag_cfg.get("url", "")).hostname
    if host and not _reachable(host):
        raise CheckpointError(missing_weights_message(arch, tag, tag_cfg, f"{host} cannot be reached (no network)"))
    try:
        log.info("downloading pretrained weights %s:%s", arch, tag)
        source.path = Path(open_clip.download_pretrained(tag_cfg, cache_dir=str(cache_dir) if cache_dir else None))
    except Exception as exc:  # network, hub and checksum failures alike
        raise CheckpointError(missing_weights_message(arch, tag, tag_cfg, f"the download failed ({exc})")) from exc
    return source
