"""Tests for the NetGraft building blocks: n-shot sampler, 1x1 adapters, normalized logit loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.data import DataError, ImageTensorDataset, TensorLoader
from kdforge.data.few_shot import NO_LABEL, LabelFreeImageTensorDataset, few_shot_dataset, few_shot_indices
from kdforge.errors import ConfigError
from kdforge.graft import fold_adapters, identity_conv1x1, normalized_logit_loss


def _labels(per_class=(12, 15, 9, 20), shuffle_seed=0):
    lab = torch.cat([torch.full((n,), k, dtype=torch.int64) for k, n in enumerate(per_class)])
    return lab[torch.randperm(lab.numel(), generator=torch.Generator().manual_seed(shuffle_seed))]


def _dataset(per_class=(12, 15, 9, 20)):
    lab = _labels(per_class)
    n = lab.numel()
    images = torch.arange(n * 3 * 4 * 4, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(n, 3, 4, 4)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)  # tag each image with its index
    return ImageTensorDataset(images, lab, [f"c{k}" for k in range(len(per_class))],
                              (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), name="toy")


# --------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("shots,holdout", [(1, 0), (3, 2), (9, 0), (5, 4)])
def test_class_balance_sorted_disjoint(shots, holdout):
    lab = _labels()
    tr, ho = few_shot_indices(lab, shots, seed=7, holdout=holdout)
    assert tr.dtype == torch.int64 and ho.dtype == torch.int64
    assert torch.equal(torch.bincount(lab[tr], minlength=4), torch.full((4,), shots))
    assert torch.equal(torch.bincount(lab[ho], minlength=4), torch.full((4,), holdout))
    assert torch.equal(tr, tr.sort().values) and torch.equal(ho, ho.sort().values)
    assert tr.unique().numel() == tr.numel() and ho.unique().numel() == ho.numel()
    assert not set(tr.tolist()) & set(ho.tolist())


def test_deterministic_and_seed_dependent():
    lab = _labels()
    a = few_shot_indices(lab, 3, seed=1, holdout=2)
    b = few_shot_indices(lab, 3, seed=1, holdout=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = few_shot_indices(lab, 3, seed=2, holdout=2)
    assert not torch.equal(a[0], c[0])
    # the global RNG plays no part
    torch.manual_seed(123)
    d = few_shot_indices(lab, 3, seed=1, holdout=2)
    assert torch.equal(a[0], d[0])


def test_holdout_does_not_change_training_draw_and_shots_nest():
    lab = _labels()
    base, empty = few_shot_indices(lab, 4, seed=5)
    assert empty.numel() == 0
    for h in (1, 3, 5):
        tr, ho = few_shot_indices(lab, 4, seed=5, holdout=h)
        assert torch.equal(tr, base)
        assert ho.numel() == 4 * h
    small, _ = few_shot_indices(lab, 2, seed=5)
    assert set(small.tolist()) <= set(base.tolist())


def test_sampler_errors():
    lab = _labels((12, 15, 9, 20))
    with pytest.raises(DataError, match=r"class 2 .*9 image.*3 \+ 7 = 10"):
        few_shot_indices(lab, 3, seed=0, holdout=7)
    with pytest.raises(ConfigError, match="shots"):
        few_shot_indices(lab, 0, seed=0)
    with pytest.raises(ConfigError, match="holdout"):
        few_shot_indices(lab, 1, seed=0, holdout=-1)
    with pytest.raises(ConfigError, match="shots"):
        few_shot_indices(lab, 1.5, seed=0)
    # a class of the label space with no image at all
    with pytest.raises(DataError, match="class 4 .*0 image"):
        few_shot_indices(lab, 1, seed=0, num_classes=5)
    with pytest.raises(DataError, match="negative"):
        few_shot_indices(torch.full((4,), -1), 1, seed=0)


def test_few_shot_dataset_label_free_and_holdout():
    ds = _dataset()
    train, held = few_shot_dataset(ds, shots=2, seed=3, holdout=3)
    tr_idx, ho_idx = few_shot_indices(ds.labels, 2, seed=3, holdout=3)
    assert isinstance(train, LabelFreeImageTensorDataset) and train.has_labels is False
    assert len(train) == 8 and torch.equal(train.images, ds.images[tr_idx])
    assert torch.equal(train.labels, torch.full((8,), NO_LABEL))
    assert train.classes == ds.classes and train.mean == ds.mean and train.num_classes == 4
    with pytest.raises(DataError, match="label-free"):
        train.class_counts()
    # no usable labels: cross-entropy on them fails instead of training silently
    with pytest.raises((IndexError, RuntimeError)):
        F.cross_entropy(torch.zeros(len(train), 4), train.labels)
    # subsets stay label-free; batching works
    sub = train.subset([0, 2])
    assert isinstance(sub, LabelFreeImageTensorDataset) and torch.equal(sub.images, train.images[[0, 2]])
    loader = TensorLoader(train, batch_size=8, shuffle=True, drop_last=False, device="cpu", augment=None, seed=0)
    x, y = next(iter(loader))
    assert x.shape[0] == 8 and bool((y == NO_LABEL).all())
    # sampling a label-free set again is refused
    with pytest.raises(DataError, match="label-free"):
        few_shot_dataset(train, 1, seed=0)
    # hold-out keeps its labels
    assert type(held) is ImageTensorDataset
    assert torch.equal(held.labels, ds.labels[ho_idx])
    assert torch.equal(held.class_counts(), torch.full((4,), 3))
    # keep_labels
    train_l, _ = few_shot_dataset(ds, shots=2, seed=3, keep_labels=True)
    assert type(train_l) is ImageTensorDataset and torch.equal(train_l.labels, ds.labels[tr_idx])
    # the label-free class refuses real labels
    with pytest.raises(ValueError, match="label-free"):
        LabelFreeImageTensorDataset(ds.images, ds.labels, ds.classes, ds.mean, ds.std)


def test_few_shot_dataset_checks_every_class():
    lab = torch.tensor([0, 0, 1, 1, 0, 1])
    ds = ImageTensorDataset(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), lab, ["a", "b", "c"], (0.5,), (0.5,))
    with pytest.raises(DataError, match=r"class 2 \('c'\) has 0"):
        few_shot_dataset(ds, 1, seed=0)


# --------------------------------------------------------------------------- adapters


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_equal_widths_exact(dtype):
    x = torch.randn(3, 16, 5, 7, dtype=dtype)
    conv = identity_conv1x1(16, 16, dtype=dtype)
    assert conv.kernel_size == (1, 1) and conv.bias is not None
    with torch.no_grad():
        assert torch.equal(conv(x), x)


def test_identity_pads_and_truncates():
    x = torch.randn(2, 6, 4, 4)
    with torch.no_grad():
        up = identity_conv1x1(6, 10)(x)
        down = identity_conv1x1(6, 4)(x)
    assert up.shape == (2, 10, 4, 4)
    assert torch.equal(up[:, :6], x) and torch.equal(up[:, 6:], torch.zeros_like(up[:, 6:]))
    assert torch.equal(down, x[:, :4])
    with pytest.raises(ConfigError):
        identity_conv1x1(0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("widths", [(8, 32, 8), (4, 16, 12), (16, 6, 10)])
def test_fold_preserves_outputs(dtype, widths):
    torch.manual_seed(0)
    s, t, s2 = widths
    s2t = nn.Conv2d(s, t, 1, dtype=dtype)
    t2s = nn.Conv2d(t, s2, 1, dtype=dtype)
    nn.init.normal_(s2t.bias)
    nn.init.normal_(t2s.bias)
    folded = fold_adapters(s2t, t2s)
    assert (folded.in_channels, folded.out_channels) == (s, s2) and folded.weight.dtype == dtype
    x = torch.randn(3, s, 5, 5, dtype=dtype)
    with torch.no_grad():
        ref, got = t2s(s2t(x)), folded(x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.allclose(got, ref, **tol)


def test_fold_without_bias_and_identity_pair():
    s2t, t2s = nn.Conv2d(4, 8, 1, bias=False), nn.Conv2d(8, 4, 1, bias=False)
    folded = fold_adapters(s2t, t2s)
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        assert torch.allclose(folded(x), t2s(s2t(x)), atol=1e-6)
        assert torch.equal(folded.bias, torch.zeros(4))
    ident = fold_adapters(identity_conv1x1(4, 8), identity_conv1x1(8, 4))
    assert torch.equal(ident.weight, identity_conv1x1(4, 4).weight)


def test_fold_errors():
    good = nn.Conv2d(4, 8, 1)
    with pytest.raises(ConfigError, match="chain"):
        fold_adapters(good, nn.Conv2d(6, 4, 1))
    with pytest.raises(ConfigError, match="kernel_size"):
        fold_adapters(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 4, 1))
    with pytest.raises(ConfigError, match="stride"):
        fold_adapters(good, nn.Conv2d(8, 4, 1, stride=2))
    with pytest.raises(ConfigError, match="groups"):
        fold_adapters(good, nn.Conv2d(8, 4, 1, groups=2))
    with pytest.raises(ConfigError, match="padding"):
        fold_adapters(good, nn.Conv2d(8, 4, 1, padding=1))
    with pytest.raises(ConfigError, match="nn.Conv2d"):
        fold_adapters(nn.Linear(4, 8), nn.Conv2d(8, 4, 1))


# --------------------------------------------------------------------------- loss


def test_loss_matches_formula_by_hand():
    torch.manual_seed(0)
    zg = torch.randn(5, 10, dtype=torch.float64)
    zt = torch.randn(5, 10, dtype=torch.float64)
    expected = sum(
        ((zg[i] / zg[i].norm() - zt[i] / zt[i].norm()) ** 2).sum() for i in range(5)
    )
    got = normalized_logit_loss(zg, zt)
    assert got.dim() == 0 and torch.allclose(got, expected, rtol=1e-12)
    assert torch.allclose(normalized_logit_loss(zg, zt, reduction="mean"), expected / 5, rtol=1e-12)
    # scale invariance per row, zero for identical directions
    assert torch.allclose(normalized_logit_loss(3 * zg, 0.5 * zt), expected, rtol=1e-12)
    assert normalized_logit_loss(zt * 2, zt).abs().item() < 1e-12


def test_loss_float32_for_half_and_gradient_stops_at_teacher():
    zg = torch.randn(4, 7).to(torch.bfloat16).requires_grad_()
    zt = torch.randn(4, 7).to(torch.bfloat16).requires_grad_()
    loss = normalized_logit_loss(zg, zt)
    assert loss.dtype == torch.float32
    loss.backward()
    assert zg.grad is not None and zg.grad.abs().sum() > 0
    assert zt.grad is None
    with pytest.raises(ValueError, match="shape"):
        normalized_logit_loss(torch.zeros(2, 3), torch.zeros(2, 4))
