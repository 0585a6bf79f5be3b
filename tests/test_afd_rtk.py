"""AFD (Ji et al., AAAI 2021) and RTK (our interpretation, docs/rtk.md).

Checked against independent computations written out here: the LayerAttention logits rebuilt
from the module's parameters (GAP, Linear, BatchNorm with running statistics, ReLU, bilinear,
positional terms, / sqrt(dim), / temperature), the value maps with our own pooling, the
representative-key mask with plain Python loops, RTK's n_t / n_s scale against AFD's; plus exact
identities (masked keys get 0.0 and no gradient, full attention when top_k >= n_t), the default
layers per family (the official AFD code's), a short engine run and the errors.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdforge.methods.rtk as rtk_module
from kdforge.config import config_from_dict
from kdforge.engine import Trainer, load_checkpoint, load_model, train_from_config
from kdforge.errors import ConfigError, LayerError
from kdforge.features import FeatureTaps, expand_patterns
from kdforge.methods import Losses, StepOutputs, build_method
from kdforge.methods.adapters import resample_to
from kdforge.methods.afd import LayerAttention, attention_value, value_distances
from kdforge.methods.default_taps import default_layers
from kdforge.methods.rtk import representative_keys
from kdforge.models import build_model


# ----------------------------------------------------------------------------- helpers
def step(t_feats: dict, s_feats: dict, batch: int) -> StepOutputs:
    return StepOutputs(images=torch.zeros(batch, 3, 4, 4), labels=None,
                       student_logits=torch.zeros(batch, 10), teacher_logits=torch.zeros(batch, 10),
                       student_features=s_feats, teacher_features=t_feats)


T_SHAPES = {"t0": (5, 8, 8), "t1": (6, 4, 4), "t2": (7, 2, 2)}
S_SHAPES = {"s0": (3, 8, 8), "s1": (4, 4, 4)}


def random_feats(shapes: dict, batch: int, grad: bool = False) -> dict:
    return {k: torch.randn(batch, *shape).relu_().add_(0.1).requires_grad_(grad) for k, shape in shapes.items()}


def make(name: str, t_feats: dict, s_feats: dict, **params):
    """A method on hand-made features: layers set directly, setup run on the features."""
    method = build_method(name, {"dim": 8, **params})
    method.teacher_layers, method.student_layers = list(t_feats), list(s_feats)
    batch = next(iter(s_feats.values())).shape[0]
    method.setup(None, None, step(t_feats, s_feats, batch))
    return method


def randomize_bn(module: nn.Module, kind: type = nn.BatchNorm1d) -> None:
    """Random running statistics and affine parameters for every BatchNorm of `kind`; eval mode uses them."""
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, kind):
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.normal_()
                bn.bias.normal_()
    module.eval()


def bn_eval(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    d = lambda t: t.detach().double()  # noqa: E731
    return (x - d(bn.running_mean)) / torch.sqrt(d(bn.running_var) + bn.eps) * d(bn.weight) + d(bn.bias)


def linear(x: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    return x @ lin.weight.detach().double().t() + lin.bias.detach().double()


def gap(f: torch.Tensor) -> torch.Tensor:
    f = f.detach().double()
    return f.sum(dim=(2, 3)) / (f.shape[2] * f.shape[3])


def manual_logits(att: LayerAttention, query_feats: list, key_feats: list) -> torch.Tensor:
    """(N, n_q, n_k) logits written out from the module's parameters (eval-mode BatchNorm)."""
    dim, n_q, n_k = att.dim, len(query_feats), len(key_feats)
    queries = [bn_eval(linear(gap(f), head[0]), head[1]) for head, f in zip(att.queries, query_feats)]
    keys = []
    for head, f in zip(att.keys, key_feats):
        k = torch.clamp(bn_eval(linear(gap(f), head[0]), head[1]), min=0.0)  # ReLU
        keys.append(bn_eval(linear(k, att.bilinear[0]), att.bilinear[1]))  # (N, n_q * dim)
    pq, pk = att.pos_query.detach().double(), att.pos_key.detach().double()
    n = query_feats[0].shape[0]
    out = torch.zeros(n, n_q, n_k, dtype=torch.float64)
    for q in range(n_q):
        for k in range(n_k):
            key_kq = keys[k][:, q * dim:(q + 1) * dim]
            out[:, q, k] = ((queries[q] * key_kq).sum(dim=1) + (pq[q] * pk[k]).sum()) / math.sqrt(dim)
    return out


def own_resample(a: torch.Tensor, size: tuple) -> torch.Tensor:
    """(N, H, W) -> (N, h, w): block means when shrinking by an integer factor, repetition when
    growing by one, else the adaptive-pooling windows [floor(i H / h), ceil((i + 1) H / h))."""
    n, hh, ww = a.shape
    h, w = size
    if (hh, ww) == (h, w):
        return a
    if hh % h == 0 and ww % w == 0 and hh // h == ww // w:
        f = hh // h
        return a.reshape(n, h, f, w, f).mean(dim=(2, 4))
    if h % hh == 0 and w % ww == 0 and h // hh == w // ww:
        f = h // hh
        return a.repeat_interleave(f, dim=1).repeat_interleave(f, dim=2)
    out = torch.zeros(n, h, w, dtype=a.dtype)
    for i in range(h):
        r0, r1 = (i * hh) // h, -((-(i + 1) * hh) // h)
        for j in range(w):
            c0, c1 = (j * ww) // w, -((-(j + 1) * ww) // w)
            out[:, i, j] = a[:, r0:r1, c0:c1].mean(dim=(1, 2))
    return out


def own_value(f: torch.Tensor, size: tuple) -> torch.Tensor:
    f = f.detach().double()
    a = (f * f).sum(dim=1) / f.shape[1]
    v = own_resample(a, size).flatten(1)
    return v / v.norm(dim=1, keepdim=True)


def own_distances(s_feats: list, t_feats: list) -> torch.Tensor:
    """D[b, s, t] = mean over t's positions of (v(F_s at t's size) - v(F_t))^2."""
    n = s_feats[0].shape[0]
    d = torch.zeros(n, len(s_feats), len(t_feats), dtype=torch.float64)
    for j, f_t in enumerate(t_feats):
        size = tuple(f_t.shape[-2:])
        v_t = own_value(f_t, size)
        for i, f_s in enumerate(s_feats):
            d[:, i, j] = (own_value(f_s, size) - v_t).pow(2).mean(dim=1)
    return d


def own_keep(logits, top_k: int, threshold: float) -> list:
    """Nested lists of kept key indices per (b, s): top-k logits whose full-softmax weight >= threshold,
    plus always the argmax."""
    rows = logits.detach().double().tolist()
    out = []
    for image in rows:
        out.append([])
        for row in image:
            order = sorted(range(len(row)), key=lambda j: -row[j])
            top = order[:min(top_k, len(row))]
            z = sum(math.exp(x) for x in row)
            kept = {j for j in top if math.exp(row[j]) / z >= threshold} | {order[0]}
            out[-1].append(sorted(kept))
    return out


def mask_of(kept: list, n_k: int) -> torch.Tensor:
    return torch.tensor([[[j in row for j in range(n_k)] for row in image] for image in kept])


# ----------------------------------------------------------------------------- 1. weights sum to one
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_afd_weights_sum_to_one_over_student_layers(seed):
    torch.manual_seed(seed)
    t, s = random_feats(T_SHAPES, 4), random_feats(S_SHAPES, 4)
    m = make("afd", t, s)
    alpha, kept = m.layer_weights(step(t, s, 4))
    assert kept is None
    assert alpha.shape == (4, len(T_SHAPES), len(S_SHAPES))  # rows teacher layers, columns student layers
    assert m.weight_axes() == (list(T_SHAPES), list(S_SHAPES))
    assert torch.allclose(alpha.sum(dim=2), torch.ones(4, len(T_SHAPES)), atol=1e-6)
    assert (alpha > 0).all()


@pytest.mark.parametrize("seed, top_k, threshold", [(0, 1, 0.0), (1, 2, 0.0), (2, 3, 0.0), (3, 2, 0.3), (4, 3, 0.2)])
def test_rtk_weights_sum_to_one_over_kept_keys(seed, top_k, threshold):
    torch.manual_seed(seed)
    t, s = random_feats(T_SHAPES, 4), random_feats(S_SHAPES, 4)
    m = make("rtk", t, s, top_k=top_k, threshold=threshold, temperature=0.5)
    alpha, keep = m.layer_weights(step(t, s, 4))
    assert alpha.shape == keep.shape == (4, len(S_SHAPES), len(T_SHAPES))  # rows student layers
    assert m.weight_axes() == (list(S_SHAPES), list(T_SHAPES))
    assert torch.allclose(alpha.sum(dim=2), torch.ones(4, len(S_SHAPES)), atol=1e-6)
    assert torch.allclose((alpha * keep).sum(dim=2), torch.ones(4, len(S_SHAPES)), atol=1e-6)
    assert (alpha[~keep] == 0.0).all() and (alpha[keep] > 0).all()


# ----------------------------------------------------------------------------- 2. representative keys
@pytest.mark.parametrize("top_k", [1, 2, 3, 4, 7])
def test_rtk_keeps_min_top_k_n_t_keys_without_threshold(top_k):
    torch.manual_seed(top_k)
    t = random_feats({f"t{i}": (4, 4, 4) for i in range(4)}, 6)
    s = random_feats(S_SHAPES, 6)
    m = make("rtk", t, s, top_k=top_k, temperature=2.0)
    m.attention.eval()
    alpha, keep = m.layer_weights(step(t, s, 6))
    assert (keep.sum(dim=2) == min(top_k, 4)).all()
    logits = m.attention(list(s.values()), list(t.values())) / 2.0
    assert torch.equal(keep, mask_of(own_keep(logits, top_k, 0.0), 4))
    assert (alpha[~keep] == 0.0).all()
    # the weights are the softmax over the kept logits only
    expected = torch.where(keep, logits.double().exp(), torch.zeros((), dtype=torch.float64))
    expected = expected / expected.sum(dim=2, keepdim=True)
    assert torch.allclose(alpha.double(), expected, atol=1e-6)


def test_representative_keys_by_hand():
    logits = torch.tensor([[[3.0, 2.0, 1.0, 0.0], [0.0, 0.1, 5.0, -1.0]]])
    # softmax of row 0: [0.644, 0.237, 0.087, 0.032]; row 1: [0.0066, 0.0073, 0.984, 0.0024]
    assert representative_keys(logits, 3, 0.0).tolist() == [[[True, True, True, False], [True, True, True, False]]]
    assert representative_keys(logits, 3, 0.2).tolist() == [[[True, True, False, False], [False, False, True, False]]]
    assert representative_keys(logits, 3, 0.9).tolist() == [[[True, False, False, False], [False, False, True, False]]]
    assert representative_keys(logits, 1, 0.0).tolist() == [[[True, False, False, False], [False, False, True, False]]]
    # keys above the threshold but outside the top-k are not kept
    flat = torch.tensor([[[1.0, 0.99, 0.98, 0.97]]])  # every weight is about 0.25
    assert representative_keys(flat, 2, 0.2).tolist() == [[[True, True, False, False]]]


@pytest.mark.parametrize("threshold", [0.05, 0.1, 0.2, 0.3, 0.5, 0.9])
def test_representative_keys_threshold_matches_loops(threshold):
    torch.manual_seed(int(threshold * 100))
    logits = torch.randn(8, 3, 5) * 1.5
    counts = set()
    for top_k in range(1, 7):
        keep = representative_keys(logits, top_k, threshold)
        assert torch.equal(keep, mask_of(own_keep(logits, top_k, threshold), 5)), top_k
        assert keep.any(dim=2).all()  # the best key is always kept
        assert (keep.sum(dim=2) <= min(top_k, 5)).all()
        counts |= set(keep.sum(dim=2).flatten().tolist())
    if threshold <= 0.2:
        assert len(counts) > 2  # the threshold really removed some of the top-k, not all of them


def masked_layer_setup(train_mode: bool):
    """RTK with 3 teacher layers, top_k = 2, and positional terms that push teacher layer 1 far
    below the others for every student query and image: it is masked everywhere."""
    torch.manual_seed(5)
    t = random_feats({"t0": (5, 8, 8), "t1": (6, 4, 4), "t2": (7, 4, 4)}, 4, grad=True)
    s = random_feats(S_SHAPES, 4, grad=True)
    m = make("rtk", t, s, top_k=2)
    randomize_bn(m.attention)
    m.attention.train(train_mode)
    with torch.no_grad():
        m.attention.pos_query.fill_(1.0)
        m.attention.pos_key.zero_()
        m.attention.pos_key[1].fill_(-100.0)  # logit term -100 * dim / sqrt(dim) for every query
    return m, t, s


@pytest.mark.parametrize("train_mode", [False, True])
def test_rtk_masked_pairs_get_zero_weight_and_no_gradient(train_mode, monkeypatch):
    m, t, s = masked_layer_setup(train_mode)
    captured = {}

    def keep_distances(s_feats, t_feats):
        d = value_distances(s_feats, t_feats)
        d.retain_grad()
        captured["D"] = d
        return d

    def keep_logits(_module, _args, output):
        output.retain_grad()
        captured["logits"] = output

    monkeypatch.setattr(rtk_module, "value_distances", keep_distances)
    handle = m.attention.register_forward_hook(keep_logits)
    out = step(t, s, 4)
    loss = m(out)
    handle.remove()
    alpha, keep = m.layer_weights(out)
    assert not keep[:, :, 1].any() and keep[:, :, [0, 2]].all()
    assert (alpha[:, :, 1] == 0.0).all()
    loss.backward()
    d_grad, l_grad = captured["D"].grad, captured["logits"].grad
    # d loss / d D[b, s, t] = (n_t / n_s) alpha[b, s, t] / N on kept pairs, exactly 0 on masked ones
    assert (d_grad[~keep] == 0.0).all()
    assert torch.allclose(d_grad[keep], alpha.detach()[keep] / 4 * (3 / 2), atol=1e-7)
    assert (l_grad[~keep] == 0.0).all() and (l_grad[keep] != 0).any()
    # the teacher never gets a gradient; the student and the kept key heads do
    assert all(f.grad is None for f in t.values())
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s.values())
    assert m.attention.pos_key.grad[1].abs().sum() == 0.0
    for i in (0, 2):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.attention.keys[i].parameters())
    if not train_mode:
        # eval mode: the masked teacher layer's key head is cut off from the loss completely. (In
        # training mode the shared bilinear BatchNorm normalises all keys with one batch statistic,
        # so a masked layer's key head still moves the kept keys: AFD's module design, not the mask.)
        for p in m.attention.keys[1].parameters():
            assert p.grad is None or (p.grad == 0.0).all()


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_rtk_loss_and_gradients_equal_a_version_without_masked_pairs(threshold):
    """Dropping the masked pairs entirely (gathering only kept entries) gives the same loss and the
    same gradients for the student features and every attention parameter."""
    torch.manual_seed(11)
    t = random_feats(T_SHAPES, 4)
    s = random_feats(S_SHAPES, 4, grad=True)
    m = make("rtk", t, s, top_k=2, threshold=threshold, temperature=0.7)
    randomize_bn(m.attention)
    out = step(t, s, 4)
    loss = m(out)
    params = [p for p in m.parameters()]
    grads = torch.autograd.grad(loss, [*s.values(), *params], allow_unused=True)

    s_list, t_list = list(s.values()), list(t.values())
    logits = m.attention(s_list, t_list) / 0.7
    dist = value_distances(s_list, t_list)
    kept = own_keep(logits, 2, threshold)
    assert any(len(row) < 2 for image in kept for row in image) or threshold == 0.0
    ref = 0.0
    for b, image in enumerate(kept):
        for i, row in enumerate(image):
            idx = torch.tensor(row)
            w = F.softmax(logits[b, i, idx], dim=0)
            ref = ref + (w * dist[b, i, idx]).sum()
    ref = ref / 4 * (len(t_list) / len(s_list))
    ref_grads = torch.autograd.grad(ref, [*s.values(), *params], allow_unused=True)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None or (g == 0).all()
        else:
            assert torch.allclose(g, r, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- 3. reduction to full attention
@pytest.mark.parametrize("top_k", [3, 4, 10])
def test_rtk_with_all_keys_is_full_attention(top_k):
    torch.manual_seed(top_k)
    t, s = random_feats(T_SHAPES, 4), random_feats(S_SHAPES, 4)
    m = make("rtk", t, s, top_k=top_k, threshold=0.0, temperature=1.5)
    randomize_bn(m.attention)
    out = step(t, s, 4)
    alpha, keep = m.layer_weights(out)
    s_list, t_list = list(s.values()), list(t.values())
    logits = m.attention(s_list, t_list) / 1.5
    assert keep.all()
    assert torch.equal(alpha, F.softmax(logits, dim=2))
    scale = len(t_list) / len(s_list)
    full = (F.softmax(logits, dim=2) * value_distances(s_list, t_list)).sum(dim=(1, 2)).mean() * scale
    assert m(out).item() == pytest.approx(full.item(), rel=1e-6)
    manual = F.softmax(manual_logits(m.attention, s_list, t_list) / 1.5, dim=2)
    expected = (manual * own_distances(s_list, t_list)).sum(dim=(1, 2)).mean() * scale
    assert m(out).item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------- 4. value maps of different sizes
def test_adaptive_pooling_upsampling_is_nearest_repetition():
    a = torch.randn(3, 2, 2)
    assert torch.equal(resample_to(a, (4, 4)), a.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2))
    b = torch.randn(3, 8, 8)
    assert torch.allclose(resample_to(b, (4, 4)), b.reshape(3, 4, 2, 4, 2).mean(dim=(2, 4)), atol=1e-6)


def test_attention_value_is_normalised_mean_square():
    f = torch.randn(2, 3, 8, 8)
    v = attention_value(f, (4, 4))
    expected = (f.double() ** 2).mean(dim=1).reshape(2, 4, 2, 4, 2).mean(dim=(2, 4)).flatten(1)
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(v.double(), expected, atol=1e-6)
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-6)


def test_value_distances_match_direct_computation():
    torch.manual_seed(3)
    s = [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 2, 2), torch.randn(2, 2, 6, 6), torch.randn(2, 5, 4, 4)]
    t = [torch.randn(2, 6, 4, 4), torch.randn(2, 3, 8, 8), torch.randn(2, 2, 2, 2)]
    d = value_distances(s, t)
    assert d.shape == (2, 4, 3)
    assert torch.allclose(d.double(), own_distances(s, t), rtol=1e-5, atol=1e-8)
    # written out once more for the 8x8 student vs 4x4 teacher pair, and the 2x2 student vs the 4x4 teacher
    a_s = (s[0] ** 2).mean(dim=1).reshape(2, 4, 2, 4, 2).mean(dim=(2, 4)).flatten(1)
    a_u = (s[1] ** 2).mean(dim=1).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).flatten(1)
    a_t = (t[0] ** 2).mean(dim=1).flatten(1)
    unit = lambda v: v / v.norm(dim=1, keepdim=True)  # noqa: E731
    assert torch.allclose(d[:, 0, 0], (unit(a_s) - unit(a_t)).pow(2).mean(dim=1), rtol=1e-5)
    assert torch.allclose(d[:, 1, 0], (unit(a_u) - unit(a_t)).pow(2).mean(dim=1), rtol=1e-5)
    # identical maps are at distance 0; the distance does not depend on the scale of a feature map
    assert value_distances([t[1]], [t[1]]).abs().max() == 0.0
    assert torch.allclose(value_distances([s[0] * 7.0], t), d[:, :1], rtol=1e-4, atol=1e-8)


# ----------------------------------------------------------------------------- 5. loss vs a direct computation
def test_layer_attention_logits_match_hand_computation():
    torch.manual_seed(8)
    q = [torch.randn(3, 4, 4, 4), torch.randn(3, 6, 2, 2)]
    k = [torch.randn(3, 5, 8, 8), torch.randn(3, 2, 4, 4), torch.randn(3, 3, 2, 2)]
    att = LayerAttention([4, 6], [5, 2, 3], dim=8)
    randomize_bn(att)
    assert torch.allclose(att(q, k).double(), manual_logits(att, q, k), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_afd_loss_matches_direct_computation(seed):
    torch.manual_seed(seed)
    t, s = random_feats(T_SHAPES, 4), random_feats(S_SHAPES, 4)
    m = make("afd", t, s)
    randomize_bn(m.attention)
    s_list, t_list = list(s.values()), list(t.values())
    logits = manual_logits(m.attention, t_list, s_list)  # teacher layers ask: (N, n_t, n_s)
    dist = own_distances(s_list, t_list)  # (N, n_s, n_t)
    total = 0.0
    for b in range(4):
        for j in range(len(t_list)):
            z = sum(math.exp(logits[b, j, i].item()) for i in range(len(s_list)))
            for i in range(len(s_list)):
                total += math.exp(logits[b, j, i].item()) / z * dist[b, i, j].item()
    out = step(t, s, 4)
    assert m(out).item() == pytest.approx(total / 4, rel=1e-5)
    alpha, _ = m.layer_weights(out)
    assert torch.allclose(alpha.double(), F.softmax(logits, dim=2), atol=1e-6)


@pytest.mark.parametrize("top_k, threshold, temperature", [(1, 0.0, 1.0), (2, 0.0, 0.5), (2, 0.4, 0.5), (3, 0.25, 2.0)])
def test_rtk_loss_matches_direct_computation(top_k, threshold, temperature):
    torch.manual_seed(top_k + int(threshold * 10))
    t, s = random_feats(T_SHAPES, 4), random_feats(S_SHAPES, 4)
    m = make("rtk", t, s, top_k=top_k, threshold=threshold, temperature=temperature)
    randomize_bn(m.attention)
    s_list, t_list = list(s.values()), list(t.values())
    logits = manual_logits(m.attention, s_list, t_list) / temperature  # student layers ask: (N, n_s, n_t)
    dist = own_distances(s_list, t_list)
    kept = own_keep(logits, top_k, threshold)
    total = 0.0
    for b, image in enumerate(kept):
        for i, row in enumerate(image):
            z = sum(math.exp(logits[b, i, j].item()) for j in row)
            total += sum(math.exp(logits[b, i, j].item()) / z * dist[b, i, j].item() for j in row)
    out = step(t, s, 4)
    assert m(out).item() == pytest.approx(total / 4 * len(t_list) / len(s_list), rel=1e-5)
    _, keep = m.layer_weights(out)
    assert torch.equal(keep, mask_of(kept, len(t_list)))


# ----------------------------------------------------------------------------- 5b. equal weights, same scale
def uniform_attention(m) -> None:
    """Every logit 0 (eval mode, zero bilinear BatchNorm affine, zero positional terms): uniform weights."""
    randomize_bn(m.attention)
    with torch.no_grad():
        m.attention.bilinear[1].weight.zero_()
        m.attention.bilinear[1].bias.zero_()
        m.attention.pos_query.zero_()
        m.attention.pos_key.zero_()


SIX_T = {f"t{i}": (4 + i, 8 // 2 ** (i // 2), 8 // 2 ** (i // 2)) for i in range(6)}


@pytest.mark.parametrize("t_shapes, s_shapes", [(T_SHAPES, S_SHAPES), (S_SHAPES, T_SHAPES), (SIX_T, S_SHAPES)])
def test_afd_and_rtk_at_equal_weight_have_the_same_scale(t_shapes, s_shapes):
    """With uniform weights AFD = sum_t mean_s D and RTK = (n_t / n_s) sum_s mean_t D: both (1 / n_s) sum D."""
    torch.manual_seed(len(t_shapes))
    t, s = random_feats(t_shapes, 4), random_feats(s_shapes, 4)
    n_t, n_s = len(t), len(s)
    afd, rtk = make("afd", t, s), make("rtk", t, s, top_k=n_t)
    uniform_attention(afd)
    uniform_attention(rtk)
    out = step(t, s, 4)
    assert torch.allclose(afd.layer_weights(out)[0], torch.full((4, n_t, n_s), 1 / n_s))
    assert torch.allclose(rtk.layer_weights(out)[0], torch.full((4, n_s, n_t), 1 / n_t))
    d = own_distances(list(s.values()), list(t.values())).tolist()  # [b][s][t]
    afd_direct = sum(d[b][i][j] / n_s for b in range(4) for j in range(n_t) for i in range(n_s)) / 4
    rtk_direct = n_t / n_s * sum(d[b][i][j] / n_t for b in range(4) for i in range(n_s) for j in range(n_t)) / 4
    assert afd(out).item() == pytest.approx(afd_direct, rel=1e-5)
    assert rtk(out).item() == pytest.approx(rtk_direct, rel=1e-5)
    assert rtk(out).item() == pytest.approx(afd(out).item(), rel=1e-5)
    unscaled = sum(d[b][i][j] / n_t for b in range(4) for i in range(n_s) for j in range(n_t)) / 4
    assert rtk(out).item() == pytest.approx(unscaled * n_t / n_s, rel=1e-5)  # not the unscaled sum (n_s != n_t)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_afd_and_rtk_lie_in_n_t_times_the_distance_range(seed):
    """Any weights: both losses are n_t times a convex combination of the distances of an image."""
    torch.manual_seed(seed)
    t, s = random_feats(SIX_T, 1), random_feats(S_SHAPES, 1)
    afd, rtk = make("afd", t, s), make("rtk", t, s, top_k=2, threshold=0.1)
    randomize_bn(afd.attention)
    randomize_bn(rtk.attention)
    d = own_distances(list(s.values()), list(t.values()))
    lo, hi = len(t) * d.min().item(), len(t) * d.max().item()
    out = step(t, s, 1)
    for loss in (afd(out).item(), rtk(out).item()):
        assert lo * (1 - 1e-5) <= loss <= hi * (1 + 1e-5)


# ----------------------------------------------------------------------------- real models, layers
WRN_16_2_TAPS = ["layer1.1.relu1", "layer2.0.relu1", "layer2.1.relu1", "layer3.0.relu1", "layer3.1.relu1", "relu"]


@pytest.mark.parametrize("name", ["afd", "rtk"])
def test_wrn_default_layers_are_the_bn_relu_features(name):
    """Official AFD code, WRN: its features 1..(d-4)/2 are relu(bn1(x)) of blocks 2.. and the final relu(bn1(out))."""
    student, teacher = build_model("wrn_16_2"), build_model("wrn_40_2")
    m = build_method(name, {})
    m.bind(student, teacher)
    assert m.student_layers == WRN_16_2_TAPS
    expected = [f"layer{i}.{j}.relu1" for i in (1, 2, 3) for j in range(6)][1:] + ["relu"]
    assert m.teacher_layers == expected and len(expected) == 18


def test_wrn_default_taps_hold_bn_relu_of_each_block_output():
    torch.manual_seed(0)
    model = build_model("wrn_16_2", num_classes=10)
    randomize_bn(model, nn.BatchNorm2d)
    taps, blocks = default_layers(model, "attention"), model.block_names
    assert taps == WRN_16_2_TAPS
    with FeatureTaps(model, taps + blocks) as tapper, torch.no_grad():
        _, feats = tapper(torch.randn(2, 3, 32, 32))
    bns = [model.get_submodule(b).bn1 for b in blocks[1:]] + [model.bn1]
    for tap, block, bn in zip(taps, blocks, bns):
        x = feats[block].double()
        c = lambda t: t.detach().double()[None, :, None, None]  # noqa: E731
        expected = ((x - c(bn.running_mean)) / torch.sqrt(c(bn.running_var) + bn.eps) * c(bn.weight)
                    + c(bn.bias)).clamp(min=0.0)
        assert torch.allclose(feats[tap].double(), expected, rtol=1e-4, atol=1e-5), tap
        assert (feats[block] < 0).any() and not torch.allclose(feats[tap], feats[block])  # not the raw sum


@pytest.mark.parametrize("model_name, expected", [
    ("resnet110", [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(1, 18, 2)]),  # official: every second block
    ("resnet56", [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(9)]),
    ("resnet20", [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(3)]),
    ("resnet32", [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(5)]),
    ("resnet8x4", ["layer1.0", "layer2.0", "layer3.0"]),
    ("resnet32x4", [f"layer{i}.{j}" for i in (1, 2, 3) for j in range(5)]),
])
def test_resnet_default_layers_follow_the_official_code(model_name, expected):
    model = build_model(model_name)
    assert default_layers(model, "attention") == expected
    for name in ("afd", "rtk"):
        m = build_method(name, {})
        m.bind(model, model)
        assert m.teacher_layers == m.student_layers == expected


@pytest.mark.parametrize("model_name", ["resnet50", "vgg8", "mobilenetv2", "shufflenetv2", "resnet18_imagenet"])
def test_other_families_default_to_every_block_output(model_name):
    model = build_model(model_name)
    assert default_layers(model, "attention") == model.block_names and len(model.block_names) <= 27


def test_default_layers_of_small_resnets_are_every_block_and_globs_expand():
    student, teacher = build_model("resnet8", num_classes=10, in_channels=1), build_model("resnet14", num_classes=10,
                                                                                          in_channels=1)
    for name in ("afd", "rtk"):
        m = build_method(name, {})
        m.bind(student, teacher)
        assert m.teacher_layers == teacher.block_names == ["layer1.0", "layer1.1", "layer2.0", "layer2.1",
                                                           "layer3.0", "layer3.1"]
        assert m.student_layers == student.block_names
        g = build_method(name, {"teacher_layers": ["layer3.?"], "student_layers": ["layer2.*"]})
        g.bind(student, teacher)
        assert g.teacher_layers == ["layer3.0", "layer3.1"]
        assert g.student_layers == expand_patterns(student, ["layer2.*"]) and "layer2.0" in g.student_layers


@pytest.mark.parametrize("name", ["afd", "rtk"])
def test_methods_run_on_tapped_zoo_models(name):
    student, teacher = build_model("resnet8", num_classes=10, in_channels=1), build_model("resnet14", num_classes=10,
                                                                                          in_channels=1)
    teacher.eval()
    m = build_method(name, {"dim": 16})
    m.bind(student, teacher)
    images = torch.randn(4, 1, 16, 16)
    with FeatureTaps(student, m.student_layers) as s_taps, FeatureTaps(teacher, m.teacher_layers) as t_taps:
        s_logits, s_feats = s_taps(images)
        with torch.no_grad():
            t_logits, t_feats = t_taps(images)
        out = StepOutputs(images, None, s_logits, t_logits, dict(s_feats), dict(t_feats), student, teacher)
        m.setup(student, teacher, out)
        loss = m(out)
    n_t, n_s = len(teacher.block_names), len(student.block_names)
    rows = n_s if name == "rtk" else n_t
    assert len(m.attention.queries) == rows and len(m.attention.keys) == n_t + n_s - rows
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad and p.dim() == 4)
    assert all(p.grad is None for p in teacher.parameters())


# ----------------------------------------------------------------------------- 7. errors
@pytest.mark.parametrize("name", ["afd", "rtk"])
def test_no_teacher_is_a_layer_error(name):
    with pytest.raises(LayerError, match="teacher"):
        build_method(name, {}).bind(build_model("resnet8", num_classes=10, in_channels=1), None)


@pytest.mark.parametrize("params, key", [({"top_k": 0}, "top_k"), ({"top_k": -2}, "top_k"),
                                         ({"threshold": 1.0}, "threshold"), ({"threshold": -0.1}, "threshold"),
                                         ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
                                         ({"dim": 0}, "dim")])
def test_bad_parameters_are_errors(params, key):
    with pytest.raises(ConfigError, match=key):
        build_method("rtk", params)
    with pytest.raises(ValueError, match=key):
        rtk_module.RTK(**params)


@pytest.mark.parametrize("name", ["afd", "rtk"])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_two_d_tapped_layer_is_a_layer_error_naming_it(name, side):
    student, teacher = build_model("resnet8", num_classes=10, in_channels=1), build_model("resnet14", num_classes=10,
                                                                                          in_channels=1)
    m = build_method(name, {f"{side}_layers": ["layer3.0", "fc:input"]})
    m.bind(student, teacher)
    images = torch.randn(2, 1, 16, 16)
    with FeatureTaps(student, m.student_layers) as s_taps, FeatureTaps(teacher, m.teacher_layers) as t_taps:
        s_logits, s_feats = s_taps(images)
        t_logits, t_feats = t_taps(images)
    out = StepOutputs(images, None, s_logits, t_logits, dict(s_feats), dict(t_feats), student, teacher)
    with pytest.raises(LayerError, match="fc:input"):
        m.setup(student, teacher, out)


# ----------------------------------------------------------------------------- 6. engine
RUN = {
    "seed": 0, "data": {"batch_size": 8, "eval_batch_size": 64, "augment": {"crop_padding": 2, "hflip": False}},
    "optim": {"lr": 0.05}, "schedule": {"name": "constant", "epochs": 1},
    "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32", "log_every": 1,
              "max_steps": 3},
}


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(64, 32)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("afd_teacher")
    cfg = config_from_dict({**RUN, "name": "teacher", "output_dir": str(out), "student": {"model": "resnet14"},
                            "losses": {"ce": 1.0}, "train": {**RUN["train"], "max_steps": 2}})
    train_from_config(cfg)
    return out / "teacher"


@pytest.mark.parametrize("name", ["afd", "rtk"])
def test_engine_run_trains_the_attention_module(name, teacher_dir, digits, tmp_path):
    cfg = config_from_dict({**RUN, "name": name, "output_dir": str(tmp_path), "student": {"model": "resnet8"},
                            "teacher": {"checkpoint": str(teacher_dir)}, "losses": {"ce": 1, name: 200}})
    teacher, _ = load_model(teacher_dir, "last")
    torch.manual_seed(0)
    student = build_model("resnet8", num_classes=10, in_channels=1)
    losses = Losses.from_config(cfg.losses)
    trainer = Trainer(student, losses, *digits, teacher=teacher, config=cfg, run_dir=tmp_path / name)
    trainer.prepare()
    method = losses.methods[name]
    assert method.teacher_layers == teacher.block_names and method.student_layers == student.block_names
    before = {k: v.detach().clone() for k, v in losses.named_parameters()}
    assert any(".attention." in k for k in before)
    trainer.fit()

    steps = [json.loads(l) for l in (tmp_path / name / "log.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "step"]
    assert len(steps) == 3
    assert all(math.isfinite(r["loss"]) and math.isfinite(r[name]) and r[name] > 0 for r in steps)
    saved = load_checkpoint(tmp_path / name, "last")["losses"]
    attention = {k: v for k, v in saved.items() if k.startswith(f"methods.{name}.attention.")}
    assert set(attention) >= {f"methods.{name}.attention.pos_query", f"methods.{name}.attention.pos_key",
                              f"methods.{name}.attention.bilinear.0.weight"}
    for key, value in before.items():
        assert torch.equal(saved[key], losses.state_dict()[key].cpu())
    changed = [k for k, v in before.items() if not torch.equal(saved[k], v)]
    assert f"methods.{name}.attention.pos_query" in changed and f"methods.{name}.attention.bilinear.0.weight" in changed
    assert len(changed) >= len(before) // 2


def test_engine_run_with_teacher_layer_glob(teacher_dir, tmp_path):
    losses = {"ce": 1, "rtk": {"weight": 200, "teacher_layers": ["layer3.*"], "top_k": 3}}
    cfg = config_from_dict({**RUN, "name": "glob", "output_dir": str(tmp_path), "student": {"model": "resnet8"},
                            "teacher": {"checkpoint": str(teacher_dir)}, "losses": losses,
                            "train": {**RUN["train"], "max_steps": 2}})
    train_from_config(cfg)
    teacher, _ = load_model(teacher_dir, "last")
    saved = load_checkpoint(tmp_path / "glob", "last")
    n_t = len(expand_patterns(teacher, ["layer3.*"]))
    assert n_t > 2 and saved["losses"]["methods.rtk.attention.pos_key"].shape[0] == n_t
    steps = [json.loads(l) for l in (tmp_path / "glob" / "log.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "step"]
    assert steps and all(math.isfinite(r["loss"]) for r in steps)
