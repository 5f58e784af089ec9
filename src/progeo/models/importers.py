"""Import foreign checkpoints into progeo's formats.

:func:`import_checkpoint` reads a ProGEO / CosPlace-style state dict of a descriptor model:

- ``backbone.*``: the CLIP image tower, with OpenAI / open_clip module names
  (``backbone.conv1.weight``, ``backbone.layer3.0.bn1.running_mean``,
  ``backbone.transformer.resblocks.0.attn.in_proj_weight``...), or, for ResNets, an
  ``nn.Sequential`` of the tower's children (``backbone.0.weight`` = conv1...): matched to the
  tower's children by order, with every tensor name and shape verified;
- ``aggregation.*``: CosPlace's head (``aggregation.1.p`` GeM, ``aggregation.3.*`` linear);
- ignored: an optional DDP ``module.`` prefix (stripped), the text side (``text_encoder.*``,
  ``token_embedding.*``), prompt tensors and ResNet attention-pool weights (unused by the GeM
  model); ``visual.*`` (a CLIP checkpoint) is read like ``backbone.*``.

:func:`import_prompts` turns the authors' stage-1 output (``torch.save`` of a list of
PromptLearner modules: a pickle, read only with ``trust_pickle=True``) into a prompts file.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from progeo.errors import CheckpointError, ConfigError
from progeo.models import backbones, registry
from progeo.models.backbones import PreprocessConfig
from progeo.models.checkpoints import save_model
from progeo.models.geolocalizer import GeoLocalizer, ModelConfig
from progeo.models.prompts import DEFAULT_TEMPLATE, PromptLearner, PromptsInfo, save_prompts, tokenize_template
from progeo.models.state_dicts import (CLIP_EXTRA_KEYS, check_state_dict, describe_mismatch, fill_bn_counters, load_file,
                                      read_state_dict)

log = logging.getLogger(__name__)

TEXT_PREFIXES = ("text_encoder.", "token_embedding.", "transformer.", "positional_embedding", "ln_final.",
                 "text_projection", "logit_scale", "logit_bias", "prompt_learner")
PROMPT_NAMES = ("cls_ctx", "token_prefix", "token_suffix")


@dataclass
class ImportReport:
    out: Path
    arch: str
    head: str
    fc_output_dim: int
    image_size: tuple[int, int]
    tensors_loaded: int
    mapping: str  # "names" or "sequential order"
    dropped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    test_resize: bool = True  # False: evaluated at the images' native size


def _split_source(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict[str, int]]:
    image, head, dropped = {}, {}, {"text side": 0, "prompts": 0}
    unknown = []
    for key, value in state.items():
        if key.startswith(("backbone.", "visual.")):
            image[key.split(".", 1)[1]] = value
        elif key.startswith("aggregation."):
            head[key] = value
        elif key.split(".")[-1] in PROMPT_NAMES:
            dropped["prompts"] += 1
        elif key.startswith(TEXT_PREFIXES) or key in CLIP_EXTRA_KEYS:
            dropped["text side"] += 1
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unrecognised key(s) {', '.join(unknown[:5])}; expected backbone.*, aggregation.* "
                              "(and optionally text_encoder.* / prompt tensors)")
    if not image:
        raise CheckpointError(f"no backbone.* tensors among {len(state)} keys (first: {', '.join(list(state)[:3])})")
    return image, head, {k: v for k, v in dropped.items() if v}


def _map_sequential(image: dict[str, torch.Tensor], visual: torch.nn.Module) -> tuple[dict, int]:
    """Map ``N.rest`` keys of an nn.Sequential of tower children onto the tower's child names."""
    groups: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in image.items():
        idx, _, rest = key.partition(".")
        groups.setdefault(int(idx), {})[rest] = value
    source = [groups[i] for i in sorted(groups)]
    targets = [(name, child.state_dict()) for name, child in visual.named_children() if child.state_dict()]
    mapped, dropped = OrderedDict(), 0
    for pos, (name, expected) in enumerate(targets):
        if pos >= len(source):
            raise CheckpointError(f"the Sequential backbone has {len(source)} stateful children, the "
                                  f"{type(visual).__name__} needs {len(targets)} (missing from {name} on)")
        got, src_idx = fill_bn_counters(expected, source[pos]), sorted(groups)[pos]
        shape_ok = set(got) == set(expected) and all(got[k].shape == expected[k].shape for k in expected)
        if not shape_ok:
            raise CheckpointError(f"backbone.{src_idx}.* does not match child '{name}' by order: "
                                  + "; ".join(describe_mismatch(expected, got)))
        mapped.update({f"{name}.{k}": v for k, v in got.items()})
    for extra in source[len(targets):]:
        if "positional_embedding" in extra and "c_proj.weight" in extra:  # the attention pool
            dropped += len(extra)
        else:
            raise CheckpointError(f"the Sequential backbone has more children than the tower "
                                  f"(extra keys {', '.join(list(extra)[:3])})")
    return mapped, dropped


def import_checkpoint(src: str | Path, backbone: str, out: str | Path, *, fc_output_dim: int | None = None,
                      image_size=None, normalization: str = "imagenet", normalize: bool = False,
                      quick_gelu: bool = True, trust_pickle: bool = False, single_file: bool | None = None,
                      test_resize: bool | None = None) -> ImportReport:
    """Convert a ProGEO/CosPlace state dict into a saved progeo model at ``out``.

    ``backbone`` names the architecture (``RN50``, ``ViT-B/16``...; a ``:tag`` is ignored: all
    weights come from the file). ``fc_output_dim`` defaults to what the tensors imply.
    The recorded preprocessing is the authors' protocol (their ``--image_size`` 512 training
    size, and their eval.py): ``image_size`` defaults to the ViT's position-embedding grid
    (512 px for their checkpoints) and to 512 for ResNets (the attention-pool grid, 224 px, is
    CLIP's pretraining size, not theirs). ``test_resize`` defaults to False for ResNets (their
    test images are fed at native size unless ``--resize_test_imgs``) and True for ViTs (which
    take only their own size; the authors evaluate them with ``--resize_test_imgs``).
    ``normalization`` defaults to ImageNet mean/std, what the authors trained and tested with;
    ``quick_gelu`` to True (OpenAI CLIP weights).
    """
    src = Path(src)
    arch, _ = registry.split_backbone_spec(backbone)
    clip_cfg = registry.architecture_config(arch)
    clip_cfg["quick_gelu"] = bool(quick_gelu)
    family = registry.vision_family(clip_cfg)
    if family == "other":
        raise ConfigError(f"{arch} is neither a CLIP ResNet nor a CLIP ViT; import supports those two families")
    image, head, dropped = _split_source(read_state_dict(src, trust_pickle=trust_pickle, what="checkpoint"))
    notes = []
    sequential = all(re.match(r"^\d+\.", k) for k in image)
    if family == "vit":
        if sequential:
            raise CheckpointError("numeric backbone.N.* keys are only understood for ResNet backbones")
        patch = clip_cfg["vision_cfg"]["patch_size"]
        grid = round((image["positional_embedding"].shape[0] - 1) ** 0.5) if "positional_embedding" in image else None
        size = backbones.size_pair(image_size) if image_size else backbones.size_pair(grid * patch if grid else 224)
        dim = int(fc_output_dim or clip_cfg["embed_dim"])
        if head:
            raise CheckpointError(f"a ViT ProGEO model has no aggregation head, the file has {', '.join(list(head)[:3])}")
    else:
        size = backbones.size_pair(image_size or 512)
        lin = head.get("aggregation.3.weight")
        dim = int(fc_output_dim or (lin.shape[0] if lin is not None else clip_cfg["embed_dim"]))
    if test_resize is False and family == "vit":
        raise ConfigError(f"a ViT takes only {size[0]}x{size[1]} images: its test images must be resized (drop test_resize=False)")
    test_resize = family == "vit" if test_resize is None else bool(test_resize)
    preprocess = PreprocessConfig(size, test_resize=test_resize).with_normalization(normalization)
    config = ModelConfig(arch=arch, clip_config=clip_cfg, head="gem" if family == "resnet" else "clip",
                         fc_output_dim=dim, preprocess=preprocess, normalize=normalize,
                         provenance={"imported_from": str(src), "source_bytes": src.stat().st_size})
    model = GeoLocalizer.from_config(config)
    expected_visual = model.backbone.state_dict()
    if sequential:
        image, n_pool = _map_sequential(image, model.backbone)
        mapping = "sequential order"
    else:
        mapping, n_pool = "names", 0
        if family == "resnet":
            pool_keys = [k for k in image if k.startswith("attnpool.")]
            n_pool = len(pool_keys)
            for k in pool_keys:
                del image[k]
        elif "positional_embedding" in image and image["positional_embedding"].shape != expected_visual["positional_embedding"].shape:
            old = image["positional_embedding"]
            grid = round((old.shape[0] - 1) ** 0.5)
            image["positional_embedding"] = backbones.interpolate_pos_embed(old.float(), grid, model.backbone.grid_size)
            notes.append(f"position embedding resized {grid}x{grid} -> {model.backbone.grid_size}")
    if n_pool:
        dropped["attention pool (unused by the GeM head)"] = n_pool
    state = {f"backbone.{k}": v for k, v in image.items()} | head
    context = f"checkpoint {src} as {arch} (fc_output_dim {dim}, {size[0]}x{size[1]} px)"
    check_state_dict(model.state_dict(), fill_bn_counters(model.state_dict(), state), context)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.config.provenance["mapping"] = mapping
    save_model(model, out, single_file=single_file)
    return ImportReport(Path(out), arch, config.head, dim, size, len(state), mapping, dropped, notes, test_resize)


# -- prompts -------------------------------------------------------------------------------------


def _tensors_of(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        found = dict(obj.named_parameters()) | dict(obj.named_buffers())
        found |= {k: v for k, v in vars(obj).items() if isinstance(v, torch.Tensor)}  # plain tensor attributes
        return {k: v.detach() for k, v in found.items()}
    if isinstance(obj, dict):
        return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise CheckpointError(f"a prompt group is a {type(obj).__name__}, expected a module or a dict of tensors")


def _prompt_groups(obj) -> list[dict[str, torch.Tensor]]:
    if isinstance(obj, (list, tuple)):
        return [_tensors_of(o) for o in obj]
    tensors = _tensors_of(obj)
    if "cls_ctx" in tensors:
        return [tensors]
    indexed: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = re.match(r"^(?:group\.)?(\d+)\.(.+)$", key)
        if m:
            indexed.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [indexed[i] for i in sorted(indexed)]


def import_prompts(src: str | Path, out: str | Path, *, train_set=None, keep_order: bool = False,
                   authors_python: str = "3.8", trust_pickle: bool = False, architecture: str = "unknown",
                   template: str = DEFAULT_TEMPLATE) -> PromptsInfo:
    """Convert the authors' prompt learners (a list, one per group) into a progeo prompts file.

    Only the tensors are kept: ``cls_ctx``, ``token_prefix``, ``token_suffix`` (and the
    tokenized prompt, which gives the end-of-text position; re-derived from ``template`` if absent).

    The authors number groups and classes otherwise than progeo (:mod:`progeo.data.authors_order`),
    so ``train_set`` (a :class:`~progeo.data.train_sets.TrainSet` opened with the groups
    parameters the prompts were learned with) is needed to put row k of each group on progeo's
    class label k. The file keeps the authors' group order and records each group's id
    (``group_ids``), which stage 2 trains. ``authors_python``: the Python the prompts were learned
    under ("3.8" for 3.8 and later, or "3.7": the class order depends on its tuple hash).
    ``keep_order=True`` copies the rows as they are (for files already in progeo's order).
    """
    import open_clip

    src = Path(src)
    groups = _prompt_groups(load_file(src, trust_pickle=trust_pickle, what="prompt file"))
    if not groups:
        raise CheckpointError(f"prompt file {src} holds no prompt learners")
    learners = []
    for g, t in enumerate(groups):
        missing = [n for n in PROMPT_NAMES if n not in t]
        if missing:
            raise CheckpointError(f"prompt group {g} of {src} lacks {', '.join(missing)} (has {', '.join(list(t)[:6])})")
        length = t["token_prefix"].shape[1] + t["cls_ctx"].shape[1] + t["token_suffix"].shape[1]
        tokens = t.get("tokenized_prompts", t.get("tokenized_prompt"))
        if tokens is None:
            tpl = tokenize_template(template, open_clip.SimpleTokenizer(context_length=length))
            if tpl.n_ctx != t["cls_ctx"].shape[1] or tpl.ctx_start != t["token_prefix"].shape[1]:
                raise CheckpointError(f"template {template!r} has {tpl.n_ctx} placeholders after {tpl.ctx_start} tokens; "
                                      f"the file's prompts have {t['cls_ctx'].shape[1]} after {t['token_prefix'].shape[1]}: "
                                      "pass the template the prompts were learned with (--template)")
            tokens = tpl.tokens
        tokens = tokens.reshape(-1, tokens.shape[-1])[:1].cpu()
        learners.append(PromptLearner(t["cls_ctx"].float().cpu(), t["token_prefix"][:1].float().cpu(),
                                      t["token_suffix"][:1].float().cpu(), tokens, int(tokens[0].argmax()), template))
    extra: dict = {"imported_from": str(src)}
    if not keep_order:
        learners, group_ids = _to_progeo_order(learners, train_set, src, authors_python)
        extra |= {"class_order": "progeo", "group_ids": group_ids, "authors_python": authors_python}
    save_prompts(out, learners, architecture=architecture, extra=extra)
    return PromptsInfo(template, learners[0].n_ctx, learners[0].eot_index, learners[0].width, length, architecture,
                       classes_per_group=[pl.n_classes for pl in learners])


def _to_progeo_order(learners: list[PromptLearner], train_set, src: Path, python: str) -> tuple[list[PromptLearner], list[list[int]]]:
    """The learners with their rows in progeo's class order, and the id of each group."""
    from progeo.data.authors_order import authors_order, rows_for_progeo

    if train_set is None:
        raise ConfigError(f"the authors number the classes of a group otherwise than progeo, so the prompts of {src} "
                          "must be remapped with the train set they were learned on: pass --train-set FOLDER (and "
                          "the groups parameters if not the defaults), or --keep-order for a file already in progeo's order")
    order = authors_order(train_set.images, train_set.groups, python)
    rows = rows_for_progeo(order, [pl.n_classes for pl in learners], f"prompt file {src}")
    out = [PromptLearner(pl.cls_ctx.detach()[torch.from_numpy(r)], pl.token_prefix, pl.token_suffix, pl.tokenized_prompt,
                         pl.eot_index, pl.template) for pl, r in zip(learners, rows)]
    return out, [list(order[i].group_id) for i in range(len(learners))]
