"""CLIP's text transformer fed with prompt *embeddings* instead of token ids (SPEC 1.3).

``ClipTextEncoder(prompts, eot_indices)``: prompts are B x L x width token embeddings (learned
context vectors spliced between fixed token embeddings); the encoder adds CLIP's positional
embedding, runs the causal transformer and ``ln_final``, takes the feature at each row's
end-of-text position and projects it with ``text_projection``. On real token embeddings it gives
exactly open_clip's ``encode_text``.
"""

from __future__ import annotations

import torch
from torch import nn

from progeo.errors import ConfigError


class ClipTextEncoder(nn.Module):
    """The text side of a CLIP model (shares its modules; freeze it with ``requires_grad_(False)``)."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        text = getattr(clip_model, "text", clip_model)  # CustomTextCLIP keeps the tower in .text
        for name in ("transformer", "token_embedding", "positional_embedding", "ln_final", "text_projection"):
            if not hasattr(text, name):
                raise ConfigError(f"{type(clip_model).__name__} has no CLIP text transformer ({name} missing); "
                                  "prompt learning needs an open_clip CLIP text tower")
        if getattr(text, "cls_emb", None) is not None:
            raise ConfigError("text towers with a class token (CoCa) are not supported for prompt learning")
        self.transformer = text.transformer
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", getattr(text, "attn_mask", None), persistent=False)

    @classmethod
    def from_clip(cls, clip) -> ClipTextEncoder:
        """From a :class:`~progeo.models.backbones.ClipModel` (or a bare open_clip model)."""
        return cls(getattr(clip, "model", clip))

    @property
    def width(self) -> int:
        return int(self.token_embedding.weight.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (B x L) -> token embeddings (B x L x width)."""
        return self.token_embedding(tokens)

    def forward(self, prompts: torch.Tensor, eot_indices: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B x L x width) and end-of-text positions (B,) -> text features (B x D)."""
        if prompts.dim() != 3 or prompts.shape[-1] != self.width:
            raise ConfigError(f"prompt embeddings must be B x L x {self.width}, got {tuple(prompts.shape)}")
        length = prompts.shape[1]
        if length > self.context_length:
            raise ConfigError(f"prompts of {length} tokens exceed the context length {self.context_length}")
        eot_indices = torch.as_tensor(eot_indices, device=prompts.device).long().reshape(-1)
        if eot_indices.shape[0] != prompts.shape[0]:
            raise ConfigError(f"{eot_indices.shape[0]} end-of-text indices for {prompts.shape[0]} prompts")
        cast = self.transformer.get_cast_dtype()
        x = prompts.to(cast) + self.positional_embedding[:length].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_indices]
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Like open_clip's ``encode_text``: token ids, end-of-text found as the largest id."""
        return self(self.embed_tokens(tokens), tokens.argmax(dim=-1))
