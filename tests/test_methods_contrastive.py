"""CRD (Tian et al., ICLR 2020) and DKD (Zhao et al., CVPR 2022) against their papers' formulas."""

import copy
import math

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer
from kdforge.engine.run import build_zoo_model
from kdforge.errors import LayerError
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, StepOutputs, build_method
from kdforge.methods.crd import sample_negatives
from kdforge.methods.dkd import dkd_parts
from kdforge.methods.kd import kd_loss
from kdforge.models import build_model


# ---------------------------------------------------------------------------- helpers
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def embed_by_hand(embed, f):
    """LinearEmbed written out: W f + b, divided by its Euclidean norm, one row at a time."""
    w, bias = embed.linear.weight.tolist(), embed.linear.bias.tolist()
    rows = []
    for x in f.flatten(1).tolist():
        y = [dot(wr, x) + br for wr, br in zip(w, bias)]
        norm = math.sqrt(sum(v * v for v in y))
        rows.append([v / norm for v in y])
    return rows


def direct_z(anchors, rows, T, N):
    """The paper's code's normaliser: N times the mean of exp(<anchor, row> / T) over the first batch."""
    values = [math.exp(dot(a, r) / T) for a, rs in zip(anchors, rows) for r in rs]
    return N * sum(values) / len(values)


def direct_nce(anchors, rows, T, Z, N, K, skip=None):
    """-(1/B) sum_b [log h(pos) + sum_k log(1 - h(neg_k))], h = P / (P + K/N), P = exp(<a, r>/T) / Z.

    rows[b][0] is the positive; skip[b][j] leaves negative j out of the sum.
    """
    total = 0.0
    for b, (a, rs) in enumerate(zip(anchors, rows)):
        for j, r in enumerate(rs):
            p = math.exp(dot(a, r) / T) / Z
            h = p / (p + K / N)
            if j == 0:
                total += math.log(h)
            elif not (skip and skip[b][j]):
                total += math.log(1 - h)
    return -total / len(anchors)


def crd_batch(indices, n=20, ds=6, dt=8, fs=None, ft=None):
    b = len(indices)
    return StepOutputs(images=torch.zeros(b, 1), labels=None, student_logits=torch.randn(b, 3),
                       teacher_logits=torch.randn(b, 3),
                       student_features={"s": torch.randn(b, ds) if fs is None else fs},
                       teacher_features={"t": torch.randn(b, dt) if ft is None else ft},
                       indices=torch.as_tensor(indices), num_train_samples=n)


def make_crd(n=20, **params):
    method = build_method("crd", {"feat_dim": 5, "nce_k": 7, **params})
    method.teacher_layers, method.student_layers = ["t"], ["s"]
    method.setup(None, None, crd_batch([0, 1, 2, 3], n=n))
    return method


# ---------------------------------------------------------------------------- CRD: formula
@pytest.mark.parametrize("full_scores", [True, False])  # one matmul over the bank, or gather the rows first
def test_crd_bank_loss_equals_the_paper_formula(full_scores):
    n, T = 20, 0.07
    method = make_crd(n=n, nce_t=T)
    method.full_scores_ratio = 10**9 if full_scores else 0
    assert method._full_scores() is full_scores
    head = method.heads[0]
    for step, indices in enumerate([[3, 7, 11, 0], [5, 19, 2, 8]]):  # 2nd step: Z kept, banks updated
        out = crd_batch(indices, n=n)
        mem_s, mem_t = head.memory_s.clone().tolist(), head.memory_t.clone().tolist()
        loss = method(out)
        idx = method.last_indices.tolist()
        assert [row[0] for row in idx] == indices and all(len(row) == 8 for row in idx)
        v_s = embed_by_hand(head.embed_s, out.student_features["s"])
        v_t = embed_by_hand(head.embed_t, out.teacher_features["t"])
        rows_t = [[mem_t[j] for j in row] for row in idx]  # student anchors, teacher bank
        rows_s = [[mem_s[j] for j in row] for row in idx]  # teacher anchors, student bank
        if step == 0:
            z_s, z_t = direct_z(v_s, rows_t, T, n), direct_z(v_t, rows_s, T, n)
        assert head.z_s.item() == pytest.approx(z_s, rel=1e-5)
        assert head.z_t.item() == pytest.approx(z_t, rel=1e-5)
        expected = direct_nce(v_s, rows_t, T, z_s, n, 7) + direct_nce(v_t, rows_s, T, z_t, n, 7)
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_crd_queue_loss_equals_the_formula_and_skips_the_same_sample():
    n, T, q = 30, 0.1, 6
    method = make_crd(n=n, nce_t=T, mode="queue", queue_size=q)
    head = method.heads[0]
    method(crd_batch([10, 11, 12, 13], n=n))  # fills slots 0..3 (and sets Z)
    z_s, z_t = head.z_s.item(), head.z_t.item()
    queue_s, queue_t = head.queue_s.tolist(), head.queue_t.tolist()
    assert head.queue_idx.tolist() == [10, 11, 12, 13, -1, -1] and head.queue_ptr.item() == 4
    out = crd_batch([12, 4, 5, 10], n=n)  # 12 and 10 are still queued: not negatives of themselves
    loss = method(out)
    v_s = embed_by_hand(head.embed_s, out.student_features["s"])
    v_t = embed_by_hand(head.embed_t, out.teacher_features["t"])
    queued = [10, 11, 12, 13, -1, -1]
    skip = [[False] + [i == pos for i in queued] for pos in [12, 4, 5, 10]]
    assert sum(map(sum, skip)) == 2
    rows_s = [[v_t[b]] + queue_t for b in range(4)]  # positive: the teacher's embedding of the same sample
    rows_t = [[v_s[b]] + queue_s for b in range(4)]
    expected = direct_nce(v_s, rows_s, T, z_s, n, q, skip) + direct_nce(v_t, rows_t, T, z_t, n, q, skip)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # FIFO with wrap-around: slots 4, 5, 0, 1 now hold this batch
    assert head.queue_idx.tolist() == [5, 10, 12, 13, 12, 4] and head.queue_ptr.item() == 2
    assert torch.allclose(head.queue_t[[4, 5, 0, 1]], torch.tensor(v_t, dtype=torch.float32), atol=1e-6)


# ---------------------------------------------------------------------------- CRD: bank mechanics
@pytest.mark.parametrize("full_scores", [True, False])
def test_crd_bank_update_is_the_momentum_formula(full_scores):
    method = make_crd(n=20, nce_m=0.3)
    method.full_scores_ratio = 10**9 if full_scores else 0
    head = method.heads[0]
    old_s, old_t = head.memory_s.clone(), head.memory_t.clone()
    out = crd_batch([6, 2, 17, 9])
    method(out)
    pos = [6, 2, 17, 9]
    for old, new, embed, f in ((old_s, head.memory_s, head.embed_s, out.student_features["s"]),
                               (old_t, head.memory_t, head.embed_t, out.teacher_features["t"])):
        v = embed_by_hand(embed, f)
        for b, i in enumerate(pos):
            mixed = [0.3 * o + 0.7 * x for o, x in zip(old[i].tolist(), v[b])]
            norm = math.sqrt(sum(x * x for x in mixed))
            assert new[i].tolist() == pytest.approx([x / norm for x in mixed], abs=1e-6)
        others = [i for i in range(20) if i not in pos]
        assert torch.equal(new[others], old[others])


def test_crd_no_update_in_eval_mode():
    method = make_crd()
    before = method.heads[0].memory_s.clone()
    method.eval()
    method(crd_batch([0, 1, 2, 3]))
    assert torch.equal(method.heads[0].memory_s, before)


def test_crd_banks_and_z_are_in_the_state_dict_and_restore():
    method = make_crd(n=20)
    method(crd_batch([1, 2, 3, 4]))
    state = method.state_dict()
    keys = {"memory_s", "memory_t", "z_s", "z_t", "embed_s.linear.weight", "embed_t.linear.weight"}
    assert {f"heads.0.{key}" for key in keys} <= set(state)
    assert state["heads.0.memory_s"].shape == (20, 5) and state["heads.0.z_s"].item() > 0
    fresh = make_crd(n=20)
    assert not torch.equal(fresh.heads[0].memory_s, method.heads[0].memory_s)
    fresh.load_state_dict(state)
    for key, value in method.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    queue = make_crd(mode="queue", queue_size=9)
    assert {"heads.0.queue_s", "heads.0.queue_t", "heads.0.queue_idx", "heads.0.queue_ptr"} <= set(queue.state_dict())
    assert "heads.0.memory_s" not in queue.state_dict()


def test_crd_negatives_never_include_the_positive_and_are_uniform():
    n = 6
    pos = torch.arange(n).repeat_interleave(3000)
    neg = sample_negatives(pos, n, 5)
    assert not (neg == pos[:, None]).any()
    for p in range(n):
        counts = torch.bincount(neg[pos == p].flatten(), minlength=n).float()
        assert counts[p] == 0
        share = counts[torch.arange(n) != p] / counts.sum()
        assert torch.allclose(share, torch.full_like(share, 0.2), atol=0.02)
    with pytest.warns(UserWarning, match="nce_k=16384 is more than the 5 other"):
        method = make_crd(n=n, nce_k=16384)
    assert method.k == 5  # clamped to N - 1
    for _ in range(20):
        method(crd_batch([0, 5, 3, 1], n=n))
        idx = method.last_indices
        assert not (idx[:, 1:] == idx[:, :1]).any()


# ---------------------------------------------------------------------------- CRD: gradients, invariances
@pytest.mark.parametrize("mode", ["bank", "queue"])
def test_crd_gradients_reach_student_and_heads_never_the_teacher(mode):
    method = make_crd(mode=mode, queue_size=8)
    method(crd_batch([4, 5, 6, 7]))  # a step first, so the queue/bank holds real embeddings
    fs = torch.randn(4, 6, requires_grad=True)
    ft = torch.randn(4, 8, requires_grad=True)  # not detached: the method must detach it
    method(crd_batch([0, 1, 2, 3], fs=fs, ft=ft)).backward()
    assert ft.grad is None
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    for head in (method.heads[0].embed_s, method.heads[0].embed_t):
        assert head.linear.weight.grad is not None and head.linear.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in method.buffers())


def test_crd_loss_ignores_the_scale_of_the_embedding_heads():
    """Embeddings are L2-normalised: scaling a head's weights and bias by c > 0 changes nothing."""
    method = make_crd()
    scaled = copy.deepcopy(method)
    with torch.no_grad():
        for head in (scaled.heads[0].embed_s, scaled.heads[0].embed_t):
            head.linear.weight.mul_(7.5)
            head.linear.bias.mul_(7.5)
    out = crd_batch([0, 4, 8, 12])
    torch.manual_seed(5)
    a = method(out)
    torch.manual_seed(5)
    b = scaled(out)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    assert torch.allclose(method.heads[0].memory_t, scaled.heads[0].memory_t, atol=1e-6)


def test_crd_loss_falls_when_the_positive_aligns():
    """The NCE loss rewards agreement: student embedding equal to its teacher-bank positive gives a lower loss."""
    method = make_crd(n=20)
    method.eval()  # keep the banks as they are
    head = method.heads[0]
    out = crd_batch([0, 1, 2, 3])
    with torch.no_grad():
        v_s = head.embed_s(out.student_features["s"])
        far = head.memory_t.clone()
        head.memory_t[[0, 1, 2, 3]] = -v_s  # positives opposite to the student embeddings
        torch.manual_seed(1)
        worse = method(out).item()
        head.memory_t[[0, 1, 2, 3]] = v_s  # positives equal to them
        torch.manual_seed(1)
        better = method(out).item()
        head.memory_t.copy_(far)
    assert better < worse


def test_crd_heads_learn_to_pair_each_sample_with_its_own_teacher_embedding():
    """What CRD must learn, with margins no CPU's rounding can cross: trained on its own loss (banks, Z,
    negatives as in training), each sample's student embedding comes to lie far closer to the teacher
    embedding of the same sample than to that of another sample, and the loss falls."""
    gen = torch.Generator().manual_seed(0)
    n, dim = 512, 32
    base = torch.randn(n, dim, generator=gen)  # the student and teacher features share this content
    f_t = base @ torch.randn(dim, 48, generator=gen)
    f_s = base @ torch.randn(dim, 24, generator=gen) + 0.1 * torch.randn(n, 24, generator=gen)
    method = build_method("crd", {})  # the paper's defaults: feat_dim 128, T 0.07, momentum 0.5
    method.teacher_layers, method.student_layers = ["t"], ["s"]
    method.setup(None, None, crd_batch([0, 1], n=n, fs=f_s[:2], ft=f_t[:2]))
    head = method.heads[0]
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)

    def alignment():
        with torch.no_grad():
            v_s, v_t = head.embed(f_s, f_t)
            shuffled = v_t[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
            return float((v_s * v_t).sum(1).mean()), float((v_s * shuffled).sum(1).mean())

    own_before, _ = alignment()
    epoch_losses = []
    for epoch in range(6):
        order, total = torch.randperm(n, generator=gen), 0.0
        for start in range(0, n, 64):
            idx = order[start:start + 64]
            loss = method(crd_batch(idx, n=n, fs=f_s[idx], ft=f_t[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        epoch_losses.append(total / (n // 64))
    own, other = alignment()
    assert abs(own_before) < 0.1  # untrained heads: no pairing
    assert own > other + 0.3 and abs(other) < 0.1, (own, other)
    assert epoch_losses[-1] < 0.8 * epoch_losses[0], epoch_losses


# ---------------------------------------------------------------------------- CRD: zoo models, errors
def zoo_outputs(method, teacher, student, n=50):
    images = torch.randn(4, 3, 32, 32)
    teacher.eval()
    with FeatureTaps(teacher, method.teacher_layers) as t_taps, torch.no_grad():
        t_logits, t_feats = t_taps(images)
    with FeatureTaps(student, method.student_layers) as s_taps:
        s_logits, s_feats = s_taps(images)
    return StepOutputs(images, torch.tensor([0, 1, 2, 3]), s_logits, t_logits, dict(s_feats), dict(t_feats),
                       student, teacher, indices=torch.tensor([3, 1, 4, 0]), num_train_samples=n)


@pytest.mark.parametrize("t_name, s_name, t_dim, s_dim, mode", [("resnet32x4", "resnet8x4", 256, 256, "bank"),
                                                                ("resnet32x4", "resnet8x4", 256, 256, "queue"),
                                                                ("vgg13", "mobilenetv2", 512, 1280, "bank")])
def test_crd_on_zoo_pairs(t_name, s_name, t_dim, s_dim, mode):
    teacher, student = build_model(t_name, num_classes=10), build_model(s_name, num_classes=10)
    method = build_method("crd", {"mode": mode, "nce_k": 30, "queue_size": 64})
    method.bind(student, teacher)
    assert method.teacher_layers == ["fc:input"] and method.student_layers == ["fc:input"]
    out = zoo_outputs(method, teacher, student)
    method.setup(student, teacher, out)
    head = method.heads[0]
    assert head.embed_t.linear.in_features == t_dim and head.embed_s.linear.in_features == s_dim
    assert head.embed_s.linear.out_features == 128
    if mode == "bank":
        assert head.memory_s.shape == (50, 128) and method.k == 30
    loss = method(out)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_crd_layer_errors_name_both_layers():
    teacher, student = build_model("resnet32x4", num_classes=10), build_model("resnet8x4", num_classes=10)
    method = build_method("crd", {"nce_k": 10})
    method.bind(student, teacher)
    out = zoo_outputs(method, teacher, student)
    out.teacher_features["fc:input"] = out.teacher_features["fc:input"][:, 0]  # no feature dimension
    with pytest.raises(LayerError, match=r"teacher layer 'fc:input' \(\).*student layer 'fc:input' \(256,\)"):
        method.setup(student, teacher, out)
    two = build_method("crd", {"student_layers": ["layer1", "layer2"]})
    with pytest.raises(LayerError, match=r"1 teacher layers \['fc:input'\] and 2 student layers \['layer1', 'la"):
        two.bind(student, teacher)


# ---------------------------------------------------------------------------- CRD: several layer pairs
def pairs_batch(indices, n=20, fs=None, ft=None):
    """Two layer pairs: vectors (s1, t1) and feature maps (s2, t2) of different shapes."""
    b = len(indices)
    fs = fs or {"s1": torch.randn(b, 6), "s2": torch.randn(b, 3, 4, 4)}
    ft = ft or {"t1": torch.randn(b, 8), "t2": torch.randn(b, 2, 2, 3)}
    return StepOutputs(images=torch.zeros(b, 1), labels=None, student_logits=torch.randn(b, 3),
                       teacher_logits=torch.randn(b, 3), student_features=fs, teacher_features=ft,
                       indices=torch.as_tensor(indices), num_train_samples=n)


def make_crd_pairs(teacher_layers=("t1", "t2"), student_layers=("s1", "s2"), n=20, **params):
    method = build_method("crd", {"feat_dim": 5, "nce_k": 7, **params})
    method.teacher_layers, method.student_layers = list(teacher_layers), list(student_layers)
    method.setup(None, None, pairs_batch([0, 1, 2, 3], n=n))
    return method


def momentum_row(old, v, m):
    """normalize(m * old + (1 - m) * v), written out."""
    mixed = [m * o + (1 - m) * x for o, x in zip(old, v)]
    norm = math.sqrt(sum(x * x for x in mixed))
    return [x / norm for x in mixed]


@pytest.mark.parametrize("mode, full_scores", [("bank", True), ("bank", False), ("queue", False)])
def test_crd_pairs_loss_is_the_sum_of_single_pair_losses(mode, full_scores):
    """Two pairs: the sum of two one-pair CRDs with the same heads, banks and negatives; the same gradients."""
    both = make_crd_pairs(mode=mode, queue_size=6)
    singles = [make_crd_pairs([t], [s], mode=mode, queue_size=6) for t, s in (("t1", "s1"), ("t2", "s2"))]
    assert len(both.heads) == 2 and all(len(single.heads) == 1 for single in singles)
    for single, head in zip(singles, both.heads):
        single.heads[0].load_state_dict(head.state_dict())
    for method in (both, *singles):
        method.full_scores_ratio = 10**9 if full_scores else 0
    for step, indices in enumerate([[3, 7, 11, 0], [5, 19, 2, 8], [3, 5, 6, 7]]):  # Z set, then kept
        fs = {"s1": torch.randn(4, 6, requires_grad=True), "s2": torch.randn(4, 3, 4, 4, requires_grad=True)}
        out = pairs_batch(indices, fs=fs)
        torch.manual_seed(step)  # the same negatives for every call
        loss = both(out)
        grads = torch.autograd.grad(loss, [fs["s1"], fs["s2"]])
        parts = []
        for single, s_name, grad in zip(singles, ("s1", "s2"), grads):
            torch.manual_seed(step)
            part = single(out)
            if mode == "bank":
                assert torch.equal(single.last_indices, both.last_indices)
            assert torch.allclose(grad, torch.autograd.grad(part, fs[s_name])[0], atol=1e-7)
            parts.append(part.item())
        assert loss.item() == pytest.approx(sum(parts), rel=1e-6)
    for single, head in zip(singles, both.heads):  # Z's, banks or queues evolved alike
        for key, value in single.heads[0].state_dict().items():
            assert torch.allclose(head.state_dict()[key], value, atol=1e-6), key


def test_crd_pairs_gradients_reach_both_student_layers_never_the_teacher():
    method = make_crd_pairs()
    method(pairs_batch([4, 5, 6, 7]))
    fs = {"s1": torch.randn(4, 6, requires_grad=True), "s2": torch.randn(4, 3, 4, 4, requires_grad=True)}
    ft = {"t1": torch.randn(4, 8, requires_grad=True), "t2": torch.randn(4, 2, 2, 3, requires_grad=True)}
    method(pairs_batch([0, 1, 2, 3], fs=fs, ft=ft)).backward()
    assert all(f.grad is None for f in ft.values())
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fs.values())
    for head in method.heads:
        for embed in (head.embed_s, head.embed_t):
            assert embed.linear.weight.grad is not None and embed.linear.weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in method.buffers())


@pytest.mark.parametrize("mode, full_scores", [("bank", True), ("bank", False), ("queue", False)])
def test_crd_pairs_each_head_updates_only_its_rows_with_its_embeddings(mode, full_scores):
    method = make_crd_pairs(n=20, nce_m=0.3, mode=mode, queue_size=6)
    method.full_scores_ratio = 10**9 if full_scores else 0
    before = [{name: b.clone() for name, b in head.named_buffers()} for head in method.heads]
    pos = [6, 2, 17, 9]
    out = pairs_batch(pos)
    method(out)
    for head, old, s_name, t_name in zip(method.heads, before, ("s1", "s2"), ("t1", "t2")):
        for side, f in (("s", out.student_features[s_name]), ("t", out.teacher_features[t_name])):
            v = embed_by_hand(getattr(head, f"embed_{side}"), f)
            if mode == "bank":
                new, prev = getattr(head, f"memory_{side}"), old[f"memory_{side}"]
                for b, i in enumerate(pos):
                    assert new[i].tolist() == pytest.approx(momentum_row(prev[i].tolist(), v[b], 0.3), abs=1e-6)
                others = [i for i in range(20) if i not in pos]
                assert torch.equal(new[others], prev[others])
            else:
                new, prev = getattr(head, f"queue_{side}"), old[f"queue_{side}"]
                assert torch.allclose(new[:4], torch.tensor(v), atol=1e-6) and torch.equal(new[4:], prev[4:])
        if mode == "queue":
            assert head.queue_idx.tolist() == pos + [-1, -1] and head.queue_ptr.item() == 4


def test_crd_mismatched_layer_lists_are_a_layer_error():
    with pytest.raises(LayerError, match=r"2 teacher layers \['t1', 't2'\] and 1 student layers \['s1'\]"):
        make_crd_pairs(["t1", "t2"], ["s1"])
    teacher, student = build_model("resnet32x4", num_classes=10), build_model("resnet8x4", num_classes=10)
    method = build_method("crd", {"teacher_layers": ["layer[123]"], "student_layers": ["layer[23]"]})
    with pytest.raises(LayerError, match=r"3 teacher layers \['layer1', 'layer2', 'layer3'\] and 2 student "
                                         r"layers \['layer2', 'layer3'\]"):
        method.bind(student, teacher)


@pytest.mark.parametrize("mode", ["bank", "queue"])
def test_crd_pairs_state_dict_round_trip_gives_the_same_loss(mode):
    method = make_crd_pairs(mode=mode, queue_size=6)
    method(pairs_batch([1, 2, 3, 4]))  # Z's set, banks or queues updated
    state = method.state_dict()
    store = "memory" if mode == "bank" else "queue"
    assert {f"heads.{i}.{key}" for i in (0, 1) for key in ("z_s", "z_t", f"{store}_s", f"{store}_t",
                                                             "embed_s.linear.weight")} <= set(state)
    assert state["heads.1.embed_s.linear.weight"].shape == (5, 48)  # the (3, 4, 4) map, flattened
    torch.manual_seed(77)
    fresh = make_crd_pairs(mode=mode, queue_size=6)  # set up on a dry-run batch, as the engine resumes
    assert not torch.equal(fresh.heads[1].embed_s.linear.weight, method.heads[1].embed_s.linear.weight)
    fresh.load_state_dict(state)
    out = pairs_batch([5, 1, 9, 0])
    torch.manual_seed(3)
    expected = method(out)
    torch.manual_seed(3)
    assert fresh(out).item() == expected.item()
    for key, value in method.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_crd_pairs_on_zoo_stage_maps():
    """Stage outputs (N, C, H, W), as PURSUhInT hints give them: one head per pair, maps flattened."""
    teacher, student = build_model("resnet32x4", num_classes=10), build_model("resnet8x4", num_classes=10)
    method = build_method("crd", {"feat_dim": 16, "nce_k": 30, "teacher_layers": ["layer[23]"],
                                  "student_layers": ["layer[23]"]})
    method.bind(student, teacher)
    assert method.teacher_layers == method.student_layers == ["layer2", "layer3"]
    out = zoo_outputs(method, teacher, student)
    method.setup(student, teacher, out)
    assert [head.embed_s.linear.in_features for head in method.heads] == [128 * 16 * 16, 256 * 8 * 8]
    assert [head.embed_t.linear.in_features for head in method.heads] == [128 * 16 * 16, 256 * 8 * 8]
    loss = method(out)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    for stage in (student.layer2, student.layer3):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.parameters())


# ---------------------------------------------------------------------------- CRD: exact resume
@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(64, 32)


def make_trainer(tmp_path, name, digits):
    cfg = config_from_dict({
        "name": name, "seed": 4, "output_dir": str(tmp_path),
        "data": {"batch_size": 16, "eval_batch_size": 32, "augment": {"crop_padding": 2, "hflip": True}},
        "optim": {"lr": 0.05}, "schedule": {"name": "cosine", "epochs": 2},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu"},
        "losses": {"ce": 1.0, "crd": {"weight": 0.8, "feat_dim": 16, "nce_k": 40},  # both modes at once
                   "crd:queue": {"weight": 0.8, "feat_dim": 16, "mode": "queue", "queue_size": 24}},
    })
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    torch.manual_seed(123)
    teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet14"}}).student, 10, 1, "teacher")
    return Trainer(student, Losses.from_config(cfg.losses), *digits, teacher=teacher, config=cfg,
                   run_dir=tmp_path / name)


def test_crd_resume_is_exact(tmp_path, digits):
    """Stop after epoch 1 and resume: the same student, banks, queues, Z and losses as one uninterrupted run."""
    full = make_trainer(tmp_path, "full", digits)
    full.fit()
    make_trainer(tmp_path, "split", digits).fit(until_epoch=1)
    torch.manual_seed(999)  # neither the bank's initialisation nor the negatives may depend on this
    second = make_trainer(tmp_path, "split", digits)
    second.fit(resume=True)
    for (name, a), b in zip(full.student.state_dict().items(), second.student.state_dict().values()):
        assert torch.equal(a, b), name
    state_full, state_second = full.losses.state_dict(), second.losses.state_dict()
    assert state_full.keys() == state_second.keys()
    keys = {"methods.crd.heads.0.z_s", "methods.crd.heads.0.memory_t", "methods.crd:queue.heads.0.queue_s"}
    assert keys <= set(state_full)
    for key, value in state_full.items():
        assert torch.equal(value, state_second[key]), key
    assert [r["train_loss"] for r in full.state.history] == [r["train_loss"] for r in second.state.history]


# ---------------------------------------------------------------------------- DKD
def direct_dkd(s, t, y, T, alpha, beta, factor):
    """Written out per sample: binary [p_y, 1 - p_y] KL and renormalised non-target KL, both times T^2."""
    tckd = nckd = 0.0
    for b in range(s.shape[0]):
        es = [math.exp(v / T) for v in s[b].tolist()]
        et = [math.exp(v / T) for v in t[b].tolist()]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        g = int(y[b])
        for a, c in ((pt[g], ps[g]), (1 - pt[g], 1 - ps[g])):
            tckd += a * math.log(a / c)
        qs_norm, qt_norm = 1 - ps[g], 1 - pt[g]
        for j in range(len(ps)):
            if j != g:
                qs, qt = ps[j] / qs_norm, pt[j] / qt_norm
                nckd += qt * math.log(qt / qs)
    n = s.shape[0]
    return factor * alpha * T * T * tckd / n, factor * beta * T * T * nckd / n


def logits_out(s, t, y, epoch=0):
    return StepOutputs(images=torch.zeros(len(s), 1), labels=y, student_logits=s, teacher_logits=t, epoch=epoch)


@pytest.mark.parametrize("epoch, factor", [(0, 1 / 20), (4, 5 / 20), (19, 1.0), (57, 1.0)])
def test_dkd_equals_the_paper_formula_with_warmup(epoch, factor):
    s, t = torch.randn(6, 7) * 2, torch.randn(6, 7) * 3
    y = torch.tensor([0, 3, 6, 2, 2, 5])
    parts = build_method("dkd")(logits_out(s, t, y, epoch))  # alpha 1, beta 8, T 4, warm-up 20
    tckd, nckd = direct_dkd(s, t, y, 4.0, 1.0, 8.0, factor)
    assert set(parts) == {"tckd", "nckd"}
    assert parts["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    other = build_method("dkd", {"alpha": 0.5, "beta": 2.0, "T": 1.5, "warmup": 0})(logits_out(s, t, y, 0))
    tckd, nckd = direct_dkd(s, t, y, 1.5, 0.5, 2.0, 1.0)
    assert other["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert other["nckd"].item() == pytest.approx(nckd, rel=1e-5)


def test_dkd_reformulates_classical_kd():
    """The paper's Eq. 7, per sample: KD = TCKD + (1 - p_y of the teacher) * NCKD."""
    for _ in range(5):
        s, t, y = torch.randn(1, 9) * 3, torch.randn(1, 9) * 3, torch.randint(0, 9, (1,))
        parts = build_method("dkd", {"alpha": 1.0, "beta": 1.0, "warmup": 0})(logits_out(s, t, y))
        p_y = torch.softmax(t / 4.0, dim=1)[0, y].item()
        expected = kd_loss(s, t, 4.0).item()
        assert parts["tckd"].item() + (1 - p_y) * parts["nckd"].item() == pytest.approx(expected, rel=1e-4)


def test_dkd_limits():
    s, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 4])
    same = build_method("dkd", {"warmup": 0})(logits_out(s, s.clone(), y))
    assert same["tckd"].item() == pytest.approx(0.0, abs=1e-6) and same["nckd"].item() == pytest.approx(0.0, abs=1e-6)
    # permuting only the non-target logits keeps p_target: TCKD is 0, NCKD is not
    t = s.clone()
    for b in range(5):
        others = [j for j in range(6) if j != y[b]]
        t[b, others] = s[b, others].roll(1)
    mixed = build_method("dkd", {"warmup": 0})(logits_out(s, t, y))
    assert mixed["tckd"].item() == pytest.approx(0.0, abs=1e-5) and mixed["nckd"].item() > 1e-3
    # a teacher certain of the target (p_y = 1 in float32) stays finite
    sure = torch.zeros(5, 6)
    sure[torch.arange(5), y] = 500.0
    parts = build_method("dkd", {"warmup": 0})(logits_out(s, sure, y))
    assert all(torch.isfinite(v) for v in parts.values())
    with pytest.raises(ValueError, match="labels"):
        build_method("dkd")(logits_out(s, s, None))
    with pytest.raises(LayerError, match=r"teacher layer 'logits' \(7,\).*student layer 'logits' \(6,\)"):
        build_method("dkd")(logits_out(s, torch.randn(5, 7), y))


def test_dkd_gradients_reach_only_the_student():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)  # not detached: the method must detach it
    parts = build_method("dkd")(logits_out(s, t, torch.tensor([0, 1, 2, 3]), epoch=3))
    sum(parts.values()).backward()
    assert t.grad is None and s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("t_name, s_name", [("resnet32x4", "resnet8x4"), ("vgg13", "mobilenetv2")])
def test_dkd_on_zoo_pairs(t_name, s_name):
    teacher, student = build_model(t_name, num_classes=10), build_model(s_name, num_classes=10)
    composer = Losses.from_config({"ce": 1.0, "dkd": 1.0})
    composer.bind(student, teacher)
    assert composer.teacher_taps == [] and composer.student_taps == []  # logits only
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t_logits = teacher.eval()(images)
    out = StepOutputs(images, torch.tensor([1, 2, 3, 4]), student(images), t_logits, epoch=2)
    composer.setup(student, teacher, out)
    losses = composer(out)
    assert set(losses) == {"ce", "dkd/tckd", "dkd/nckd"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is None for p in teacher.parameters())


def test_dkd_nckd_ignores_the_target_class_logits():
    """NCKD compares the distributions over the non-target classes only (the paper's Eq. 5): moving the target
    class's logit of either model changes TCKD, never NCKD."""
    s, t = torch.randn(5, 8) * 2, torch.randn(5, 8) * 2
    y = torch.tensor([0, 7, 3, 3, 1])
    tckd, nckd = dkd_parts(s, t, y, 4.0)
    bump = torch.nn.functional.one_hot(y, 8) * 3.0
    for s2, t2 in ((s + bump, t), (s, t - bump)):
        tckd2, nckd2 = dkd_parts(s2, t2, y, 4.0)
        assert nckd2.item() == pytest.approx(nckd.item(), rel=1e-5, abs=1e-7)
        assert abs(tckd2.item() - tckd.item()) > 1e-3
