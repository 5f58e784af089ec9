"""Text encoder over prompt embeddings, the prompt learner, the prompts file and its import."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from progeo.cli import main as cli_main
from progeo.errors import CheckpointError, ConfigError
from progeo.models.backbones import load_clip
from progeo.models.importers import import_prompts
from progeo.models.prompts import DEFAULT_TEMPLATE, PromptLearner, load_prompts, save_prompts, tokenize_template
from progeo.models.text_encoder import ClipTextEncoder

SENTENCES = ["a street view photo", "A photo of a X X X X street.", "the city of San Francisco at night", ""]


@pytest.fixture(scope="module", params=["tiny-rn", "tiny-vit"])
def clip(request):
    torch.manual_seed(0)
    return load_clip(request.param)


@pytest.fixture(scope="module")
def rn_clip():
    torch.manual_seed(0)
    return load_clip("tiny-rn")


def test_text_encoder_reproduces_open_clip_encode_text(clip):
    clip.model.eval()
    encoder = ClipTextEncoder.from_clip(clip)
    tokens = clip.tokenizer()(SENTENCES)
    assert tokens.shape == (4, 32)  # the tiny models' reduced context, via open_clip's tokenizer
    with torch.no_grad():
        reference = clip.model.encode_text(tokens)
        torch.testing.assert_close(encoder.encode_tokens(tokens), reference)
        eot = tokens.argmax(dim=-1)
        torch.testing.assert_close(encoder(encoder.embed_tokens(tokens), eot), reference)
    assert encoder.output_dim == 64 and encoder.width == 64 and encoder.context_length == 32


def test_template_tokenization_finds_placeholders_and_end_of_text(rn_clip):
    tok = rn_clip.tokenizer()
    tpl = tokenize_template(DEFAULT_TEMPLATE, tok)
    assert (tpl.ctx_start, tpl.n_ctx) == (5, 4)  # <start> a photo of a | X X X X | street . <end>
    assert tpl.eot_index == 11 and int(tpl.tokens[0, tpl.eot_index]) == tok.eot_token_id
    two = tokenize_template("a blurry photo of X X in the city", tok)
    assert (two.ctx_start, two.n_ctx, two.eot_index) == (5, 2, 10)


@pytest.mark.parametrize("template, message", [
    ("A photo of a street.", "has no 'X' placeholder"),
    ("A X photo of a X street.", "must be consecutive"),
    ("A photo " + "of a very long street name " * 6 + "X X", "longer than the 32-token context"),
])
def test_bad_templates_are_config_errors(rn_clip, template, message):
    with pytest.raises(ConfigError, match=message):
        tokenize_template(template, rn_clip.tokenizer())


def test_prompt_learner_splices_class_contexts_between_fixed_embeddings(rn_clip):
    encoder = ClipTextEncoder.from_clip(rn_clip)
    torch.manual_seed(0)
    learner = PromptLearner.from_template(300, encoder, rn_clip.tokenizer())
    tokens = tokenize_template(DEFAULT_TEMPLATE, rn_clip.tokenizer()).tokens
    emb = encoder.embed_tokens(tokens).detach()
    assert learner.cls_ctx.shape == (300, 4, 64) and learner.n_ctx == 4
    assert 0.018 < learner.cls_ctx.std().item() < 0.022 and abs(learner.cls_ctx.mean().item()) < 0.002
    labels = torch.tensor([3, 0, 299])
    prompts = learner(labels)
    assert prompts.shape == (3, 32, 64)
    torch.testing.assert_close(prompts[:, :5], emb[:, :5].expand(3, -1, -1))
    torch.testing.assert_close(prompts[:, 9:], emb[:, 9:].expand(3, -1, -1))
    torch.testing.assert_close(prompts[:, 5:9], learner.cls_ctx[labels].detach())
    assert learner.eot_indices(labels).tolist() == [11, 11, 11]
    assert sorted(n for n, _ in learner.named_parameters()) == ["cls_ctx"]
    with pytest.raises(ConfigError, match=r"labels must be in 0..299"):
        learner(torch.tensor([300]))


def test_prompt_with_real_word_contexts_equals_encode_text(rn_clip):
    rn_clip.model.eval()
    encoder = ClipTextEncoder.from_clip(rn_clip)
    learner = PromptLearner.from_template(2, encoder, rn_clip.tokenizer())
    tokens = rn_clip.tokenizer()([DEFAULT_TEMPLATE])
    with torch.no_grad():
        learner.cls_ctx[:] = encoder.embed_tokens(tokens)[0, 5:9]  # the embeddings of "x x x x"
        torch.testing.assert_close(learner.text_features(encoder, torch.tensor([1])), rn_clip.model.encode_text(tokens))


def test_gradients_reach_only_the_class_contexts(rn_clip):
    encoder = ClipTextEncoder.from_clip(rn_clip).requires_grad_(False)
    learner = PromptLearner.from_template(5, encoder, rn_clip.tokenizer())
    learner.text_features(encoder, torch.tensor([1, 1, 4])).pow(2).sum().backward()
    grad = learner.cls_ctx.grad
    assert grad[[1, 4]].abs().sum() > 0 and grad[[0, 2, 3]].abs().sum() == 0
    assert all(p.grad is None for p in encoder.parameters())


def test_prompts_file_roundtrip_and_checks(rn_clip, tmp_path):
    encoder = ClipTextEncoder.from_clip(rn_clip)
    learners = [PromptLearner.from_template(n, encoder, rn_clip.tokenizer()) for n in (3, 5)]
    path = save_prompts(tmp_path / "prompts.safetensors", learners, architecture="tiny-rn", extra={"epochs": 7})
    loaded, info = load_prompts(path, text_encoder=encoder, architecture="tiny-rn")
    assert info.template == DEFAULT_TEMPLATE and info.n_ctx == 4 and info.eot_index == 11
    assert info.classes_per_group == [3, 5] and info.extra["epochs"] == 7 and info.architecture == "tiny-rn"
    for a, b in zip(learners, loaded):
        assert torch.equal(a.cls_ctx, b.cls_ctx) and torch.equal(a.token_suffix, b.token_suffix)
        torch.testing.assert_close(a.text_features(encoder, torch.tensor([0, 2])), b.text_features(encoder, torch.tensor([0, 2])))
    with pytest.raises(CheckpointError, match="learned for tiny-rn, not tiny-vit"):
        load_prompts(path, architecture="tiny-vit")
    narrow = PromptLearner(torch.zeros(2, 4, 32), torch.zeros(1, 5, 32), torch.zeros(1, 23, 32),
                           learners[0].tokenized_prompt, 11)
    save_prompts(tmp_path / "narrow.safetensors", [narrow])
    with pytest.raises(CheckpointError, match="has width 32 / context 32; the text encoder has width 64"):
        load_prompts(tmp_path / "narrow.safetensors", text_encoder=encoder)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_prompts(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a progeo prompts file"):
        load_prompts(tmp_path / "plain.safetensors")


# -- the authors' pickled prompt learners ------------------------------------------------------------


def _authors_style_file(tmp_path, groups=(4, 6), width=64, context=32):
    """A pickled list of prompt-learner modules of a class the loader cannot import (like the authors')."""
    module = types.ModuleType("authors_stage1_code")

    class PromptLearner(nn.Module):  # mimics the shape of the released modules, not their code
        def __init__(self, n_cls):
            super().__init__()
            self.cls_ctx = nn.Parameter(torch.randn(n_cls, 4, width) * 0.02)
            fixed = torch.Generator().manual_seed(0)  # the template's embeddings: the same in every group
            self.register_buffer("token_prefix", torch.randn(1, 5, width, generator=fixed))
            self.register_buffer("token_suffix", torch.randn(1, context - 9, width, generator=fixed))
            tokens = torch.zeros(1, context, dtype=torch.long)
            tokens[0, :12] = torch.tensor([49406, 320, 1125, 539, 320, 343, 343, 343, 343, 2012, 269, 49407])
            self.tokenized_prompts = tokens
            self.num_class = n_cls

    PromptLearner.__module__ = module.__name__
    PromptLearner.__qualname__ = "PromptLearner"
    module.PromptLearner = PromptLearner
    sys.modules[module.__name__] = module
    try:
        learners = [PromptLearner(n) for n in groups]
        path = tmp_path / "last_prompt_learners.pth"
        torch.save(learners, path)
    finally:
        del sys.modules[module.__name__]
    return path, learners


def test_pickled_prompt_list_is_refused_without_trust_flag(tmp_path):
    path, _ = _authors_style_file(tmp_path)
    with pytest.raises(CheckpointError, match=r"pickle .* --trust-pickle"):
        import_prompts(path, tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_pickled_prompt_list_imports_tensors_only_with_trust_flag(tmp_path, rn_clip):
    path, originals = _authors_style_file(tmp_path)
    out = tmp_path / "prompts.safetensors"
    info = import_prompts(path, out, trust_pickle=True, architecture="tiny-rn", keep_order=True)
    assert info.classes_per_group == [4, 6] and info.eot_index == 11 and info.n_ctx == 4
    learners, meta = load_prompts(out, text_encoder=ClipTextEncoder.from_clip(rn_clip))
    assert meta.extra["imported_from"] == str(path)
    for orig, new in zip(originals, learners):
        assert torch.equal(orig.cls_ctx.detach(), new.cls_ctx.detach())
        assert torch.equal(orig.token_prefix, new.token_prefix) and torch.equal(orig.token_suffix, new.token_suffix)


def test_import_prompts_cli_refuses_then_accepts(tmp_path, capsys):
    path, _ = _authors_style_file(tmp_path, groups=(3,))
    out = tmp_path / "cli.safetensors"
    assert cli_main(["import-prompts", str(path), "--out", str(out), "--keep-order"]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert cli_main(["import-prompts", str(path), "--out", str(out), "--trust-pickle", "--backbone", "RN50",
                     "--keep-order"]) == 0
    assert "imported 1 prompt group(s)" in capsys.readouterr().out
    assert load_prompts(out)[1].architecture == "RN50"


def test_import_prompts_from_plain_state_dicts_without_pickle(tmp_path):
    state = {"cls_ctx": torch.randn(2, 4, 64), "token_prefix": torch.randn(1, 5, 64), "token_suffix": torch.randn(1, 23, 64)}
    torch.save([state, state], tmp_path / "dicts.pth")  # tensors only: weights_only load, no flag needed
    info = import_prompts(tmp_path / "dicts.pth", tmp_path / "d.safetensors", keep_order=True)
    assert info.classes_per_group == [2, 2] and info.eot_index == 11  # from the template, context 32
    torch.save([{"cls_ctx": torch.randn(2, 3, 64), "token_prefix": torch.randn(1, 5, 64),
                 "token_suffix": torch.randn(1, 24, 64)}], tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="pass the template the prompts were learned with"):
        import_prompts(tmp_path / "bad.pth", tmp_path / "b.safetensors", keep_order=True)
