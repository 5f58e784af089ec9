"""Losses checked against explicit loop formulas on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from progeo.losses import (
    CosFace,
    image_text_supcon,
    label_smoothed_cross_entropy,
    soft_triplet_loss,
    supcon_loss,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- CosFace
def test_cosface_logits_match_loop_formula():
    torch.manual_seed(0)
    head = CosFace(dim=4, n_classes=3, s=30.0, m=0.4)
    x = torch.randn(5, 4, generator=_gen(1)) * 3.0  # not normalised: the module normalises
    y = torch.tensor([0, 2, 1, 1, 0])
    out = head(x, y)
    w = head.weight.detach()
    for i in range(5):
        for c in range(3):
            xi, wc = x[i], w[c]
            cos = float(xi @ wc) / (math.sqrt(float(xi @ xi)) * math.sqrt(float(wc @ wc)))
            expected = 30.0 * (cos - (0.4 if c == int(y[i]) else 0.0))
            assert out[i, c].item() == pytest.approx(expected, abs=1e-4)
            assert head.logits(x)[i, c].item() == pytest.approx(30.0 * cos, abs=1e-4)
            assert head.cosine(x)[i, c].item() == pytest.approx(cos, abs=1e-6)


def test_cosface_init_shape_and_defaults():
    head = CosFace(dim=8, n_classes=6)
    assert head.weight.shape == (6, 8)
    assert (head.s, head.m) == (30.0, 0.4)
    bound = math.sqrt(6.0 / (6 + 8))  # Xavier-uniform bound
    assert float(head.weight.detach().abs().max()) <= bound + 1e-6
    assert float(head.weight.detach().std()) > 0


def test_cosface_gradients_and_cross_entropy():
    head = CosFace(dim=4, n_classes=3)
    x = torch.randn(6, 4, generator=_gen(2), requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = F.cross_entropy(head(x, y), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()
    assert float(head.weight.grad.abs().sum()) > 0


def test_cosface_mixed_precision_gives_float32():
    head = CosFace(dim=4, n_classes=3)
    x = torch.randn(3, 4, generator=_gen(3))
    y = torch.tensor([0, 1, 2])
    ref = head(x, y)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16(), y)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.3)  # bf16 input rounding only
    head16 = CosFace(dim=4, n_classes=3).half()
    assert head16(x.half(), y).dtype == torch.float32


def test_cosface_rejects_bad_labels_and_shapes():
    head = CosFace(dim=4, n_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))


# ---------------------------------------------------------------- SupCon
def _supcon_loop(a, b, la, lb, tau=1.0):
    row_losses = []
    for i in range(a.shape[0]):
        s = [float(a[i] @ b[j]) / tau for j in range(b.shape[0])]
        log_z = math.log(sum(math.exp(v) for v in s))
        pos = [j for j in range(b.shape[0]) if int(lb[j]) == int(la[i])]
        if not pos:
            continue  # rows without a positive are excluded
        row_losses.append(-sum(s[j] - log_z for j in pos) / len(pos))
    return sum(row_losses) / len(row_losses)


def test_supcon_matches_loop_raw_features():
    a = torch.randn(5, 3, generator=_gen(4), dtype=torch.float64)
    b = torch.randn(4, 3, generator=_gen(5), dtype=torch.float64)
    la = torch.tensor([0, 1, 1, 2, 3])  # label 3 has no column: that row is excluded
    lb = torch.tensor([1, 0, 1, 2])
    got = supcon_loss(a, b, la, lb)
    assert got.item() == pytest.approx(_supcon_loop(a, b, la, lb), rel=1e-5)
    got_t = supcon_loss(a, b, la, lb, tau=0.5)
    assert got_t.item() == pytest.approx(_supcon_loop(a, b, la, lb, tau=0.5), rel=1e-5)


def test_supcon_normalize_flag():
    a = torch.randn(4, 3, generator=_gen(6)) * 5
    b = torch.randn(4, 3, generator=_gen(7)) * 5
    lab = torch.tensor([0, 1, 0, 2])
    expected = _supcon_loop(F.normalize(a, dim=1), F.normalize(b, dim=1), lab, lab, tau=0.1)
    got = supcon_loss(a, b, lab, lab, tau=0.1, normalize=True)
    assert got.item() == pytest.approx(expected, rel=1e-4)
    assert got.item() != pytest.approx(supcon_loss(a, b, lab, lab, tau=0.1).item(), rel=1e-3)


def test_image_text_supcon_is_sum_of_both_directions():
    img = torch.randn(6, 4, generator=_gen(8), requires_grad=True)
    txt = torch.randn(6, 4, generator=_gen(9), requires_grad=True)
    lab = torch.tensor([0, 0, 1, 2, 2, 2])
    loss = image_text_supcon(img, txt, lab)
    expected = _supcon_loop(img.detach(), txt.detach(), lab, lab) + _supcon_loop(txt.detach(), img.detach(), lab, lab)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()


def test_supcon_single_class_batch_and_no_positive():
    feats = torch.randn(4, 3, generator=_gen(10), requires_grad=True)
    one = torch.zeros(4, dtype=torch.long)
    loss = image_text_supcon(feats, feats.detach() * 2, one)
    # a single class: every column is a positive, so each row's loss is -mean_j log_softmax(S_i)_j
    f = feats.detach()
    expected = _supcon_loop(f, f * 2, one, one) + _supcon_loop(f * 2, f, one, one)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    # no row has a positive: zero that still backpropagates
    none = supcon_loss(feats, feats, torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()


def test_supcon_large_raw_scores_stay_finite():
    a = torch.randn(4, 8, generator=_gen(11)) * 40  # raw CLIP-like magnitudes, S ~ 1e4
    lab = torch.tensor([0, 1, 0, 1])
    loss = supcon_loss(a, a, lab, lab)
    assert torch.isfinite(loss)


def test_supcon_mixed_dtypes():
    a = torch.randn(4, 3, generator=_gen(12))
    b = torch.randn(4, 3, generator=_gen(13))
    lab = torch.tensor([0, 1, 0, 2])
    ref = supcon_loss(a, b, lab, lab)
    mixed = supcon_loss(a.half(), b.bfloat16(), lab, lab)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(ref.item(), abs=0.05)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto = supcon_loss(a, b, lab, lab)
    assert auto.dtype == torch.float32 and auto.item() == pytest.approx(ref.item(), rel=1e-6)


def test_supcon_rejects_bad_shapes():
    with pytest.raises(ValueError):
        supcon_loss(torch.randn(3, 2), torch.randn(3, 4), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError):
        supcon_loss(torch.randn(3, 2), torch.randn(3, 2), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError):
        supcon_loss(torch.randn(3, 2), torch.randn(3, 2), torch.zeros(3), torch.zeros(3), tau=0.0)


# ---------------------------------------------------------------- label smoothing
def _ls_loop(logits, targets, eps):
    total = 0.0
    n, c = logits.shape
    for i in range(n):
        row = [float(v) for v in logits[i]]
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        nll = -log_p[int(targets[i])]
        uniform = -sum(log_p) / c
        total += (1 - eps) * nll + eps * uniform
    return total / n


def test_label_smoothing_matches_loop_and_torch():
    logits = torch.randn(5, 4, generator=_gen(14), dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    got = label_smoothed_cross_entropy(logits, y, 0.1)
    assert got.item() == pytest.approx(_ls_loop(logits, y, 0.1), rel=1e-6)
    assert got.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6)
    assert label_smoothed_cross_entropy(logits, y).item() == pytest.approx(got.item())
    plain = label_smoothed_cross_entropy(logits, y, 0.0)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_label_smoothing_gradients_single_class_and_dtypes():
    logits = torch.randn(3, 5, generator=_gen(15), requires_grad=True)
    y = torch.tensor([2, 2, 2])  # one class only in the batch
    loss = label_smoothed_cross_entropy(logits.half(), y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    one_col = label_smoothed_cross_entropy(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    assert one_col.item() == pytest.approx(0.0, abs=1e-6)  # a single class: p = 1
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        label_smoothed_cross_entropy(torch.randn(2, 5), torch.tensor([0, 5]))
    with pytest.raises(ValueError):
        label_smoothed_cross_entropy(torch.randn(2, 5), torch.tensor([0, 1]), epsilon=1.5)


# ---------------------------------------------------------------- soft triplet
def _dist(a, b):
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b)))


def _softplus(v):
    return math.log1p(math.exp(v))


def _triplet_loop(x, labels, mining):
    n = x.shape[0]
    terms = []
    for a in range(n):
        pos = [p for p in range(n) if p != a and int(labels[p]) == int(labels[a])]
        neg = [q for q in range(n) if int(labels[q]) != int(labels[a])]
        if not pos or not neg:
            continue
        if mining == "batch_hard":
            terms.append(_softplus(max(_dist(x[a], x[p]) for p in pos) - min(_dist(x[a], x[q]) for q in neg)))
        else:
            terms.extend(_softplus(_dist(x[a], x[p]) - _dist(x[a], x[q])) for p in pos for q in neg)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("mining", ["batch_hard", "all"])
def test_soft_triplet_matches_loop(mining):
    x = torch.randn(7, 3, generator=_gen(16), dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])  # 2 and 3 are singletons: no positive, not anchors
    got = soft_triplet_loss(x, labels, mining)
    assert got.item() == pytest.approx(_triplet_loop(x, labels, mining), rel=1e-5)


def test_soft_triplet_gradients_including_duplicates():
    x = torch.randn(4, 3, generator=_gen(17))
    x = torch.cat([x, x[:1]]).requires_grad_(True)  # row 4 duplicates row 0: zero distance
    labels = torch.tensor([0, 1, 1, 0, 0])
    for mining in ("batch_hard", "all"):
        x.grad = None
        loss = soft_triplet_loss(x, labels, mining)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_soft_triplet_no_valid_triplet_is_zero_with_grad():
    x = torch.randn(4, 3, generator=_gen(18), requires_grad=True)
    for labels in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
        for mining in ("batch_hard", "all"):
            loss = soft_triplet_loss(x, labels, mining)
            assert loss.item() == 0.0
            loss.backward()


def test_soft_triplet_mixed_dtype_and_bad_mining():
    x = torch.randn(6, 4, generator=_gen(19))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ref = soft_triplet_loss(x, labels)
    half = soft_triplet_loss(x.bfloat16(), labels)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(ref.item(), abs=0.05)
    with pytest.raises(ValueError, match="batch_hard"):
        soft_triplet_loss(x, labels, "semi_hard")
