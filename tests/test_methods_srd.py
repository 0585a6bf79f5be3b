"""SRD against its formula with the batch normalisation written out by hand, and its gradient routing."""

import math

import pytest
import torch

from kdforge.methods import build_method
from kdforge.methods.kd import kd_loss
from kdforge.models import build_model


def standardized_columns(z):
    """Each feature over the batch: (z - mean) / sqrt(biased variance + 1e-4), as BatchNorm in training mode."""
    n = z.shape[0]
    mean = z.mean(0)
    var = ((z - mean) ** 2).sum(0) / n
    return (z - mean) / torch.sqrt(var + 1e-4)


def test_srd_equals_the_recipe_and_trains_only_the_student_and_its_projector(tapped_outputs):
    t, s = build_model("resnet20", num_classes=10).eval(), build_model("resnet8", num_classes=10)
    method = build_method("srd")
    method.bind(s, t)
    assert method.teacher_layers == ["layer3"] and method.student_layers == ["layer3"]
    out = tapped_outputs(method, s, t, torch.randn(6, 3, 32, 32))
    method.setup(s, t, out)
    parts = method(out)
    z_s = method.projector(out.student_features["layer3"].mean(dim=(2, 3))).double()
    z_t = out.teacher_features["layer3"].mean(dim=(2, 3)).double()
    want = 2 * math.log(float(((standardized_columns(z_s) - standardized_columns(z_t)).abs() ** 4).sum().detach()))
    assert parts["feature"].item() == pytest.approx(want, rel=1e-4, abs=1e-4)
    assert parts["kl"].item() == pytest.approx(kd_loss(out.student_logits, out.teacher_logits, 1.0).item(), rel=1e-5)
    sum(parts.values()).backward()
    assert all(p.grad is None for p in t.parameters())
    assert method.projector.weight.grad.abs().sum() > 0 and s.conv1.weight.grad.abs().sum() > 0


def test_srd_feature_term_is_blind_to_an_offset_of_the_teacher_features(tapped_outputs):
    """Batch-normalised without affine: shifting every teacher feature alike changes nothing (a scale changes
    the term only through BatchNorm's epsilon, which matters for features of small batch variance)."""
    t, s = build_model("resnet20", num_classes=10).eval(), build_model("resnet8", num_classes=10)
    method = build_method("srd")
    method.bind(s, t)
    out = tapped_outputs(method, s, t, torch.randn(6, 3, 32, 32))
    method.setup(s, t, out)
    base = method(out)["feature"].item()
    f_t = out.teacher_features["layer3"]
    out.teacher_features["layer3"] = f_t + 2.0  # every pooled feature shifted alike
    assert method(out)["feature"].item() == pytest.approx(base, abs=1e-4)
