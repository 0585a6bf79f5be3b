"""PAD-L2 against the Gaussian likelihood written out by hand, its weighting of uncertain images, and its routing."""

import math

import pytest
import torch

from kdforge.config import ConfigError
from kdforge.methods import build_method
from kdforge.models import build_model


def bound_pad(tapped_outputs, teacher="resnet20", student="resnet8", n=6):
    t, s = build_model(teacher, num_classes=10).eval(), build_model(student, num_classes=10)
    method = build_method("pad")
    method.bind(s, t)
    out = tapped_outputs(method, s, t, torch.randn(n, 3, 32, 32))
    method.setup(s, t, out)
    return method, out, s, t


def direct_pad(mean, log_var, target, eps=1e-5):
    """(1 / N D) sum_i,d (mu - t)^2 / (exp(s) + eps) + (1 / N D) sum_i,d s, element by element."""
    mean, log_var, target = mean.tolist(), log_var.tolist(), target.tolist()
    count = len(mean) * len(mean[0])
    fit = sum((m - t) ** 2 / (math.exp(v) + eps) for rm, rv, rt in zip(mean, log_var, target)
              for m, v, t in zip(rm, rv, rt))
    return (fit + sum(v for row in log_var for v in row)) / count


def test_pad_equals_the_likelihood_and_binds_the_embeddings(tapped_outputs):
    method, out, s, t = bound_pad(tapped_outputs, "resnet20", "mobilenetv2")
    (t_name,), (s_name,) = method.teacher_layers, method.student_layers
    f_s, f_t = out.student_features[s_name], out.teacher_features[t_name]
    assert f_s.flatten(1).shape[1] != f_t.flatten(1).shape[1]  # the linear map is used
    got = method(out).item()
    mean = method.means[0](f_s)
    lin, bn = method.variances[0].linear, method.variances[0].bn
    z = mean @ lin.weight.t() + lin.bias  # batch norm in training mode, written out (biased variance)
    log_var = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    assert got == pytest.approx(direct_pad(mean.double(), log_var.double(), f_t.flatten(1).double()), rel=1e-4)


def test_pad_gives_uncertain_images_less_weight_than_plain_l2():
    """With a larger predicted variance for image 0, its squared error counts less: the gradient on its
    mean is exp(-s) times the L2 gradient, exactly."""
    from kdforge.methods.pad import pad_l2_loss

    mean = torch.randn(4, 3, requires_grad=True)
    target = torch.randn(4, 3)
    log_var = torch.zeros(4, 3)
    log_var[0] = 2.0
    pad_l2_loss(mean, log_var, target, eps=0.0).backward()
    l2_grad = 2 * (mean.detach() - target) / 12
    assert torch.allclose(mean.grad[0], l2_grad[0] * math.exp(-2.0), rtol=1e-5)
    assert torch.allclose(mean.grad[1:], l2_grad[1:], rtol=1e-5)


def test_pad_trains_the_student_and_its_branches_not_the_teacher(tapped_outputs):
    method, out, s, t = bound_pad(tapped_outputs, "resnet20", "resnet8")
    method(out).backward()
    assert all(p.grad is None for p in t.parameters())
    assert s.conv1.weight.grad.abs().sum() > 0
    assert method.variances[0].linear.weight.grad.abs().sum() > 0


def test_pad_rejects_a_non_positive_eps():
    with pytest.raises(ConfigError, match="losses.pad"):
        build_method("pad", {"eps": 0.0})
