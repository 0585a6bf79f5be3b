import math

import pytest
import torch

from kdforge.errors import ConfigError
from kdforge.methods import LossComposer, StepOutputs, build_method, method_names
from kdforge.methods.kd import kd_loss


def direct_kd(s, t, T):
    """T^2 * mean_b sum_c p_t log(p_t / p_s), written out by hand."""
    total = 0.0
    for b in range(s.shape[0]):
        zs = [v / T for v in s[b].tolist()]
        zt = [v / T for v in t[b].tolist()]
        ns = sum(math.exp(v) for v in zs)
        nt = sum(math.exp(v) for v in zt)
        for vs, vt in zip(zs, zt):
            ps, pt = math.exp(vs) / ns, math.exp(vt) / nt
            total += pt * math.log(pt / ps)
    return T * T * total / s.shape[0]


def kd_close(want: float, T: float):
    """`want` within kd_loss's float32 rounding: its log-probabilities carry ~1e-7 absolute error each
    (exp/log kernels and sum orders differ between CPUs), T^2 times that on the loss; at T = 8 the KL is
    small, so a relative tolerance alone is not enough (up to 2.8e-5 relative over 300 random draws here,
    while the absolute error stayed below 3.8e-7 * T^2). A wrong T^2, batch mean or KL direction is off by far more."""
    return pytest.approx(want, rel=1e-5, abs=2e-6 * T * T)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_equals_direct_formula(T):
    s, t = torch.randn(5, 7), torch.randn(5, 7) * 3
    assert kd_loss(s, t, T).item() == kd_close(direct_kd(s, t, T), T)


def test_kd_zero_when_equal_and_grad_only_to_student():
    s = torch.randn(4, 6, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    assert kd_loss(s, t.detach(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    method = build_method("kd", {"T": 2.0})
    out = StepOutputs(images=torch.zeros(4, 1), labels=None, student_logits=s, teacher_logits=t.detach() * 2)
    method(out).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_ce_equals_direct():
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    out = StepOutputs(images=torch.zeros(6, 1), labels=labels, student_logits=logits)
    direct = -(logits.log_softmax(1)[torch.arange(6), labels]).mean()
    assert build_method("ce")(out).item() == pytest.approx(direct.item(), rel=1e-6)


def test_composer_weights_and_names():
    composer = LossComposer.from_config({"ce": 0.1, "kd": {"weight": 0.9, "T": 4}, "kd:soft": {"T": 8}})
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    losses = composer(StepOutputs(images=torch.zeros(3, 1), labels=y, student_logits=s, teacher_logits=t))
    assert set(losses) == {"ce", "kd", "kd:soft"}
    ce = torch.nn.functional.cross_entropy(s, y)
    assert losses["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-6)
    assert losses["kd"].item() == kd_close(0.9 * direct_kd(s, t, 4.0), 4.0)
    assert losses["kd:soft"].item() == kd_close(direct_kd(s, t, 8.0), 8.0)
    assert composer.needs_teacher and composer.needs_labels


@pytest.mark.parametrize("losses, fragment", [
    ({"kdd": 1.0}, "kd"),
    ({"kd": {"temp": 3}}, "losses.kd.temp"),
    ({"kd": {"T": "hot"}}, "losses.kd.T"),
    ({"kd": {"T": -1}}, "positive"),
    ({"kd": "heavy"}, "losses.kd"),
])
def test_loss_config_errors(losses, fragment):
    with pytest.raises((ConfigError, KeyError)) as info:
        LossComposer.from_config(losses)
    assert fragment in str(info.value)


def test_registry_has_foundation_methods():
    assert {"ce", "kd"} <= set(method_names())
