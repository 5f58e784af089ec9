"""Class-specific prompt learning (SPEC 1.3) and the prompts file format.

A template such as ``"A photo of a X X X X street."`` is tokenized with open_clip's tokenizer;
each ``X`` token (matched case-insensitively, as CLIP lower-cases text) becomes a learnable
vector *per class* (``cls_ctx``: n_classes x n_ctx x width, init N(0, 0.02)). The token
embeddings before the Xs (start token + "a photo of a") and after them ("street." + end-of-text
+ padding) are fixed buffers (``token_prefix``, ``token_suffix``). The end-of-text position comes
from the tokenized template, not from a constant.

Prompts file (``.safetensors``; written by stage 1 and by ``progeo import-prompts``):

- tensors: ``group.{g}.cls_ctx`` for each group g (n_classes_g x n_ctx x width), the shared
  ``token_prefix`` (1 x P x width), ``token_suffix`` (1 x S x width) and ``tokenized_prompt``
  (1 x L, int64), all float32 / int64;
- metadata key ``progeo``: JSON with ``format`` ("progeo-prompts"), ``format_version``,
  ``template``, ``placeholder``, ``n_ctx``, ``eot_index``, ``width``, ``context_length``,
  ``architecture`` (backbone name or "unknown"), ``groups_num``, ``classes_per_group`` and any
  extra provenance; imported files add ``group_ids`` (the CosPlace group id of each group, in
  the order of the file) and ``class_order`` ("progeo": row k of a group is progeo's label k).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from progeo.errors import CheckpointError, ConfigError, reading
from progeo.io import atomic_path

DEFAULT_TEMPLATE = "A photo of a X X X X street."
PLACEHOLDER = "X"
PROMPTS_FORMAT = "progeo-prompts"
PROMPTS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenizedTemplate:
    text: str
    tokens: torch.Tensor  # 1 x context_length, int64
    ctx_start: int  # index of the first placeholder token
    n_ctx: int  # number of placeholder tokens (learnable vectors per class)
    eot_index: int


def tokenize_template(template: str, tokenizer, placeholder: str = PLACEHOLDER) -> TokenizedTemplate:
    """Tokenize a prompt template and locate its placeholder run and end-of-text token."""
    tokens = tokenizer([template]).long()
    encode = getattr(tokenizer, "encode", None)
    context = tokens.shape[1]
    if encode is not None and len(encode(template)) + 2 > context:
        raise ConfigError(f"prompt template {template!r} is longer than the {context}-token context; shorten it")
    probe = tokenizer([placeholder])[0].tolist()
    if len([t for t in probe if t != 0]) != 3:
        raise ConfigError(f"placeholder {placeholder!r} is not a single token for this tokenizer; use e.g. 'X'")
    ph_id = probe[1]
    positions = (tokens[0] == ph_id).nonzero().flatten().tolist()
    if not positions:
        raise ConfigError(f"prompt template {template!r} has no {placeholder!r} placeholder; write e.g. {DEFAULT_TEMPLATE!r}")
    start, n_ctx = positions[0], len(positions)
    if positions != list(range(start, start + n_ctx)):
        raise ConfigError(f"the {placeholder!r} placeholders of {template!r} must be consecutive words")
    eot_id = getattr(tokenizer, "eot_token_id", None)
    if eot_id is not None and (tokens[0] == eot_id).any():
        eot = int((tokens[0] == eot_id).nonzero()[0, 0])
    else:
        eot = int(tokens[0].argmax())
    return TokenizedTemplate(template, tokens, start, n_ctx, eot)


class PromptLearner(nn.Module):
    """Learnable per-class context vectors spliced into a fixed prompt (one learner per group)."""

    def __init__(self, cls_ctx: torch.Tensor, token_prefix: torch.Tensor, token_suffix: torch.Tensor,
                 tokenized_prompt: torch.Tensor, eot_index: int, template: str = DEFAULT_TEMPLATE):
        super().__init__()
        if cls_ctx.dim() != 3 or token_prefix.shape[-1] != cls_ctx.shape[-1] or token_suffix.shape[-1] != cls_ctx.shape[-1]:
            raise ConfigError(f"prompt tensors disagree: cls_ctx {tuple(cls_ctx.shape)}, prefix "
                              f"{tuple(token_prefix.shape)}, suffix {tuple(token_suffix.shape)}")
        length = token_prefix.shape[1] + cls_ctx.shape[1] + token_suffix.shape[1]
        if not 0 <= eot_index < length:
            raise ConfigError(f"end-of-text index {eot_index} outside the {length}-token prompt")
        self.cls_ctx = nn.Parameter(cls_ctx.detach().clone().float())
        self.register_buffer("token_prefix", token_prefix.detach().clone().float())
        self.register_buffer("token_suffix", token_suffix.detach().clone().float())
        self.register_buffer("tokenized_prompt", tokenized_prompt.detach().clone().long().reshape(1, -1))
        self.eot_index = int(eot_index)
        self.template = template

    @classmethod
    def from_template(cls, n_classes: int, text_encoder, tokenizer, template: str = DEFAULT_TEMPLATE,
                      placeholder: str = PLACEHOLDER, init_std: float = 0.02) -> PromptLearner:
        """New learner for ``n_classes`` classes; fixed parts embedded with ``text_encoder``."""
        if n_classes < 1:
            raise ConfigError(f"a prompt learner needs at least one class, got {n_classes}")
        tpl = tokenize_template(template, tokenizer, placeholder)
        if tpl.tokens.shape[1] > text_encoder.context_length:
            raise ConfigError(f"tokenizer context {tpl.tokens.shape[1]} exceeds the text encoder's {text_encoder.context_length}")
        with torch.no_grad():
            emb = text_encoder.embed_tokens(tpl.tokens.to(text_encoder.token_embedding.weight.device)).float().cpu()
        ctx = torch.empty(n_classes, tpl.n_ctx, emb.shape[-1])
        nn.init.normal_(ctx, std=init_std)
        return cls(ctx, emb[:, :tpl.ctx_start], emb[:, tpl.ctx_start + tpl.n_ctx:], tpl.tokens, tpl.eot_index, template)

    @property
    def n_classes(self) -> int:
        return int(self.cls_ctx.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.cls_ctx.shape[1])

    @property
    def width(self) -> int:
        return int(self.cls_ctx.shape[2])

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Class labels (B,) -> prompt embeddings (B x L x width)."""
        labels = torch.as_tensor(labels, device=self.cls_ctx.device).long().reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ConfigError(f"labels must be in 0..{self.n_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
        b = labels.shape[0]
        return torch.cat([self.token_prefix.expand(b, -1, -1), self.cls_ctx[labels], self.token_suffix.expand(b, -1, -1)], 1)

    def eot_indices(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full((len(labels),), self.eot_index, dtype=torch.long, device=self.cls_ctx.device)

    def text_features(self, text_encoder, labels: torch.Tensor) -> torch.Tensor:
        """Text features (B x D) of the prompts of ``labels``."""
        return text_encoder(self(labels), self.eot_indices(labels))


@dataclass
class PromptsInfo:
    """The metadata of a prompts file."""

    template: str
    n_ctx: int
    eot_index: int
    width: int
    context_length: int
    architecture: str = "unknown"
    placeholder: str = PLACEHOLDER
    classes_per_group: list[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def save_prompts(path: str | Path, learners: Sequence[PromptLearner], architecture: str = "unknown",
                 extra: dict | None = None) -> Path:
    """Write the learners of all groups to one safetensors prompts file (atomically)."""
    from safetensors.torch import save_file

    if not learners:
        raise ConfigError("no prompt learners to save")
    first = learners[0]
    for g, pl in enumerate(learners):
        if not (torch.equal(pl.token_prefix.cpu(), first.token_prefix.cpu()) and torch.equal(pl.token_suffix.cpu(), first.token_suffix.cpu())):
            raise ConfigError(f"group {g}'s fixed prompt tokens differ from group 0's; all groups must share the template")
    tensors = {f"group.{g}.cls_ctx": pl.cls_ctx.detach().float().cpu().contiguous() for g, pl in enumerate(learners)}
    tensors["token_prefix"] = first.token_prefix.float().cpu().contiguous()
    tensors["token_suffix"] = first.token_suffix.float().cpu().contiguous()
    tensors["tokenized_prompt"] = first.tokenized_prompt.cpu().contiguous()
    meta = {"format": PROMPTS_FORMAT, "format_version": PROMPTS_FORMAT_VERSION, "template": first.template,
            "placeholder": PLACEHOLDER, "n_ctx": first.n_ctx, "eot_index": first.eot_index, "width": first.width,
            "context_length": int(first.tokenized_prompt.shape[1]), "architecture": architecture,
            "groups_num": len(learners), "classes_per_group": [pl.n_classes for pl in learners], **(extra or {})}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"progeo": json.dumps(meta)})
    return path


def _read_prompts_file(path: str | Path, tensors: bool) -> tuple[dict, dict]:
    """The ``progeo`` metadata of a prompts file and, if asked, its tensors."""
    from safetensors import safe_open

    fix = "run stage 1 again (`progeo train stage1`) or convert the authors' prompts with `progeo import-prompts`"
    with reading(path, "prompts file", fix, CheckpointError):
        with safe_open(str(path), framework="pt") as f:
            return (json.loads((f.metadata() or {}).get("progeo", "{}")),
                    {k: f.get_tensor(k) for k in f.keys()} if tensors else {})


def prompt_group_ids(path: str | Path) -> list[tuple[int, int, int]] | None:
    """The group id of each group of a prompts file, when it records them (imported files do)."""
    ids = _read_prompts_file(path, tensors=False)[0].get("group_ids")
    return None if ids is None else [tuple(int(v) for v in gid) for gid in ids]


def load_prompts(path: str | Path, text_encoder=None, architecture: str | None = None,
                 device: str | torch.device = "cpu") -> tuple[list[PromptLearner], PromptsInfo]:
    """Read a prompts file; check it against ``text_encoder`` / ``architecture`` when given."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"prompts file {path} does not exist; run stage 1 or `progeo import-prompts`")
    meta, tensors = _read_prompts_file(path, tensors=True)
    if meta.get("format") != PROMPTS_FORMAT:
        raise CheckpointError(f"{path} is not a progeo prompts file (no 'progeo' metadata); convert it with `progeo import-prompts`")
    groups = int(meta.get("groups_num", 0))
    missing = [k for k in ["token_prefix", "token_suffix", "tokenized_prompt"] + [f"group.{g}.cls_ctx" for g in range(groups)]
               if k not in tensors]
    if missing:
        raise CheckpointError(f"prompts file {path} lacks tensor(s) {', '.join(missing[:5])}")
    info = PromptsInfo(template=meta["template"], n_ctx=int(meta["n_ctx"]), eot_index=int(meta["eot_index"]),
                       width=int(meta["width"]), context_length=int(meta["context_length"]),
                       architecture=meta.get("architecture", "unknown"), placeholder=meta.get("placeholder", PLACEHOLDER),
                       classes_per_group=list(meta.get("classes_per_group", [])),
                       extra={k: v for k, v in meta.items() if k not in PromptsInfo.__dataclass_fields__})
    if architecture and info.architecture not in ("unknown", architecture):
        raise CheckpointError(f"prompts file {path} was learned for {info.architecture}, not {architecture}")
    if text_encoder is not None and (info.width != text_encoder.width or info.context_length > text_encoder.context_length):
        raise CheckpointError(f"prompts file {path} has width {info.width} / context {info.context_length}; the text "
                              f"encoder has width {text_encoder.width} / context {text_encoder.context_length}")
    learners = [PromptLearner(tensors[f"group.{g}.cls_ctx"], tensors["token_prefix"], tensors["token_suffix"],
                              tensors["tokenized_prompt"], info.eot_index, info.template).to(device) for g in range(groups)]
    return learners, info
