"""CTKD: the gradient-reversal layer, the curriculum, and the learnable temperature's adversarial gradient
against the same loss computed without reversal."""

import math

import pytest
import torch

from kdforge.methods import StepOutputs, build_method
from kdforge.methods.ctkd import curriculum_lambda
from kdforge.methods.dkd import dkd_parts
from kdforge.methods.kd import kd_loss
from kdforge.methods.logit_ops import scale_gradient
from kdforge.methods.usual import usual_losses


def test_scale_gradient_is_the_identity_forward_and_scales_the_gradient_back():
    x = torch.randn(3, requires_grad=True)
    y = scale_gradient(x, -0.3)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.3, -0.6, -0.9]))


def test_the_curriculum_rises_from_zero_to_its_maximum_as_a_half_cosine():
    assert curriculum_lambda(0, 10, 1.0) == 0.0 and curriculum_lambda(10, 10, 1.0) == pytest.approx(1.0)
    assert curriculum_lambda(5, 10, 2.0) == pytest.approx(1.0) and curriculum_lambda(30, 10, 1.0) == pytest.approx(1.0)
    values = [curriculum_lambda(e, 10, 1.0) for e in range(12)]
    assert values == sorted(values)
    # the authors' CosineDecay(max 0, min -1, 10 loops) at epoch 3, as a magnitude
    assert curriculum_lambda(3, 10, 1.0) == pytest.approx(-((math.cos(3 * math.pi / 10) + 1) / 2 - 1))


@pytest.mark.parametrize("epoch", [0, 4])
def test_ctkd_is_kd_at_its_temperature_and_the_temperature_climbs_the_loss(epoch):
    s0, t = torch.randn(6, 5), torch.randn(6, 5) * 2
    method = build_method("ctkd")
    s = s0.clone().requires_grad_(True)
    loss = method(StepOutputs(images=torch.zeros(6, 1), labels=None, student_logits=s, teacher_logits=t, epoch=epoch))
    T = 1.0 + 20.0 * torch.sigmoid(torch.tensor(1.0))
    assert loss.item() == pytest.approx(kd_loss(s0, t, float(T)).item(), rel=1e-5)
    loss.backward()
    # the same loss with a plain (unreversed) theta: theta's gradient there, and the student's
    theta = torch.ones(1, requires_grad=True)
    s_plain = s0.clone().requires_grad_(True)
    kd_loss(s_plain, t, (1.0 + 20.0 * torch.sigmoid(theta)).squeeze(0)).backward()
    strength = curriculum_lambda(epoch + 1, 10, 1.0)
    assert method.theta.grad.item() == pytest.approx(-strength * theta.grad.item(), rel=1e-4, abs=1e-9)
    assert torch.allclose(s.grad, s_plain.grad, atol=1e-6)  # the student learns as in KD


def test_ctkd_on_dkd_and_its_usual_weights():
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    method = build_method("ctkd", {"base": "dkd", "alpha": 1.0, "beta": 2.0, "warmup": 0})
    assert method.needs_labels
    got = method(StepOutputs(images=torch.zeros(6, 1), labels=y, student_logits=s, teacher_logits=t, epoch=0))
    tckd, nckd = dkd_parts(s, t, y, float(1.0 + 20.0 * torch.sigmoid(torch.tensor(1.0))))
    assert got.item() == pytest.approx((tckd + 2.0 * nckd).item(), rel=1e-5)
    assert usual_losses("ctkd", 10) == {"ce": 0.1, "ctkd": {"weight": 0.9, "curriculum_epochs": 1}}
    with pytest.raises(ValueError, match="base"):
        build_method("ctkd", {"base": "at"})
