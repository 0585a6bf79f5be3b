"""MLKD against its formula written out by hand (plain Python, float64), and the authors' masks' effect."""

import math

import pytest
import torch

from kdforge.config import ConfigError
from reference_math import softmax

from kdforge.methods import StepOutputs, build_method


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def direct_mlkd(s, t, temperatures, scale=True):
    s, t = s.tolist(), t.tolist()
    B, C = len(s), len(s[0])
    instance = batch = klass = 0.0
    for T in temperatures:
        ps, pt = [softmax(r, T) for r in s], [softmax(r, T) for r in t]
        instance += T * T * sum(sum(q * math.log(q / p) for p, q in zip(a, b)) for a, b in zip(ps, pt)) / B
        for i in range(B):  # image-similarity matrices
            for j in range(B):
                gs = sum(ps[i][c] * ps[j][c] for c in range(C))
                gt = sum(pt[i][c] * pt[j][c] for c in range(C))
                batch += (gs - gt) ** 2 / B
        for a in range(C):  # class-correlation matrices
            for b in range(C):
                gs = sum(ps[i][a] * ps[i][b] for i in range(B))
                gt = sum(pt[i][a] * pt[i][b] for i in range(B))
                klass += (gs - gt) ** 2 / C
    if scale:
        p1 = [softmax(r, 1.0) for r in t]
        conf = [max(r) for r in p1]
        image_fraction = sum(c <= median(conf) for c in conf) / B
        class_mass = [sum(r[c] for r in p1) for c in range(C)]
        class_fraction = sum(m <= median(class_mass) for m in class_mass) / C
        instance, batch, klass = instance * image_fraction, batch * image_fraction, klass * class_fraction
    return instance, batch, klass


def out(s, t):
    return StepOutputs(images=torch.zeros(s.shape[0], 1), labels=None, student_logits=s, teacher_logits=t)


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("B", [6, 7])  # an even batch interpolates the median
def test_mlkd_equals_the_formula_written_out(scale, B):
    s, t = torch.randn(B, 5) * 2, torch.randn(B, 5) * 3
    temps = (2.0, 3.0, 4.0, 5.0, 6.0)
    parts = build_method("mlkd", {"confidence_scale": scale})(out(s, t))
    want = direct_mlkd(s.double(), t.double(), temps, scale)
    for key, value in zip(("instance", "batch", "class"), want):
        assert parts[key].item() == pytest.approx(value, rel=1e-4, abs=1e-7), key


def test_mlkd_confidence_scale_keeps_about_half_of_the_images_and_classes():
    """The median rule keeps ceil(n/2) of n distinct values: 4 of 7 images, 3 of 5 classes."""
    s, t = torch.randn(7, 5), torch.randn(7, 5) * 3
    scaled = build_method("mlkd", {"temperatures": [4.0]})(out(s, t))
    plain = build_method("mlkd", {"temperatures": [4.0], "confidence_scale": False})(out(s, t))
    assert scaled["instance"].item() == pytest.approx(plain["instance"].item() * 4 / 7, rel=1e-5)
    assert scaled["batch"].item() == pytest.approx(plain["batch"].item() * 4 / 7, rel=1e-5)
    assert scaled["class"].item() == pytest.approx(plain["class"].item() * 3 / 5, rel=1e-5)


def test_mlkd_is_zero_for_the_teachers_own_logits_and_reaches_only_the_student():
    t = torch.randn(8, 6) * 2
    same = build_method("mlkd")(out(t.clone(), t))
    assert all(abs(v.item()) < 1e-5 for v in same.values())
    s = torch.randn(8, 6, requires_grad=True)
    teacher = t.clone().requires_grad_(True)
    parts = build_method("mlkd")(out(s, teacher))
    sum(parts.values()).backward()
    assert s.grad.abs().sum() > 0 and teacher.grad is None


def test_mlkd_standardize_makes_the_instance_term_blind_to_the_logit_scale():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    method = build_method("mlkd", {"standardize": True, "confidence_scale": False})
    a = method(out(s, t))["instance"].item()
    b = method(out(s, 3 * t + 1))["instance"].item()
    assert a == pytest.approx(b, rel=1e-4)
    assert build_method("mlkd", {"confidence_scale": False})(out(s, 3 * t + 1))["instance"].item() != pytest.approx(a, rel=1e-2)


@pytest.mark.parametrize("params", [{"temperatures": []}, {"temperatures": [4.0, 0.0]}, {"temperatures": 4.0}])
def test_mlkd_rejects_bad_temperatures(params):
    with pytest.raises(ConfigError, match="losses.mlkd"):
        build_method("mlkd", params)


# ---------------------------------------------------------------- the two-view form (strong_view: true)

def two_views(s, t, s2, t2, labels=None):
    weak = StepOutputs(images=torch.zeros(s.shape[0], 1), labels=labels, student_logits=s, teacher_logits=t)
    weak.view = StepOutputs(images=torch.zeros(s.shape[0], 1), labels=None, student_logits=s2, teacher_logits=t2)
    return weak


def test_strong_view_adds_the_authors_second_kd_term_and_the_strong_copys_ce():
    """strong_instance = sum over T in 3, 4, 5 of T^2 KL on the strong pair + over T in 2, 6 on the weak pair
    (unscaled, as the authors' KD_ours.py sums it); strong_ce = 0.1 / 0.9 * CE of the strong copy; the weak
    parts are those of the one-view form."""
    B = 7
    s, t, s2, t2 = (torch.randn(B, 5) * k for k in (2, 3, 2, 3))
    labels = torch.randint(0, 5, (B,))
    parts = build_method("mlkd", {"strong_view": True})(two_views(s, t, s2, t2, labels))
    strong = direct_mlkd(s2.double(), t2.double(), (3.0, 4.0, 5.0), False)[0]
    weak_rest = direct_mlkd(s.double(), t.double(), (2.0, 6.0), False)[0]
    assert parts["strong_instance"].item() == pytest.approx(strong + weak_rest, rel=1e-4)
    ce = sum(-math.log(softmax(row, 1.0)[y]) for row, y in zip(s2.double().tolist(), labels.tolist())) / B
    assert parts["strong_ce"].item() == pytest.approx(ce * 0.1 / 0.9, rel=1e-5)
    one_view = build_method("mlkd")(out(s, t))
    for key in ("instance", "batch", "class"):
        assert torch.equal(parts[key], one_view[key]), key


def test_strong_view_reaches_only_the_student_on_both_views():
    s, s2 = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    t, t2 = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5, requires_grad=True)
    parts = build_method("mlkd", {"strong_view": True})(two_views(s, t, s2, t2, torch.arange(6) % 5))
    (parts["strong_instance"] + parts["strong_ce"]).backward()
    assert s.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0
    assert t.grad is None and t2.grad is None


def test_strong_view_needs_labels_for_its_ce_only():
    assert build_method("mlkd", {"strong_view": True}).needs_labels
    assert not build_method("mlkd", {"strong_view": True, "strong_ce": 0.0}).needs_labels
    assert not build_method("mlkd").needs_labels
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.raises(ValueError, match="strong_ce"):
        build_method("mlkd", {"strong_view": True})(two_views(s, t, s, t))
    label_free = build_method("mlkd", {"strong_view": True, "strong_ce": 0.0})(two_views(s, t, s, t))
    assert "strong_ce" not in label_free
    with pytest.raises(ValueError, match="out.view"):
        build_method("mlkd", {"strong_view": True})(out(s, t))


@pytest.mark.parametrize("params", [{"strong_view": True, "strong_temperatures": [4.0, 8.0]},
                                    {"strong_view": True, "strong_ce": -1.0}])
def test_strong_view_rejects_bad_settings(params):
    with pytest.raises(ConfigError, match="losses.mlkd"):
        build_method("mlkd", params)


def test_the_strong_copy_is_the_batch_strongly_augmented_in_the_loaders_normalisation():
    from kdforge.data.augment import PixelNormalization

    norm = PixelNormalization((0.3,), (0.2,))
    pixels = torch.rand(16, 1, 12, 12)
    images = norm.from_unit(pixels)
    assert build_method("mlkd").extra_views(images, norm) is None
    torch.manual_seed(0)
    view = build_method("mlkd", {"strong_view": True}).extra_views(images, norm)
    assert view.shape == images.shape and view.dtype == images.dtype
    back = norm.to_unit(view)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5  # pixel values, normalised as the batch
    changed = (back - pixels).abs().flatten(1).amax(1) > 1e-3
    assert changed.sum() >= 12  # nearly every image changed (an identity pair with no Cutout leaves one alone)

