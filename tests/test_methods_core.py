import math
import re

import pytest
import torch

from kdforge.errors import ConfigError
from kdforge.methods import Losses, StepOutputs, build_method, method_names
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
    assert kd_loss(s, s.detach().clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    t = (s.detach() * 2).requires_grad_(True)  # a teacher whose logits could take a gradient
    method = build_method("kd", {"T": 2.0})
    method(StepOutputs(images=torch.zeros(4, 1), labels=None, student_logits=s, teacher_logits=t)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("name, params", [("kd", {}), ("dkd", {"warmup": 0}), ("netgraft", {})])
def test_logit_methods_train_only_the_student(name, params):
    """Every logit-matching method detaches the teacher's logits: no gradient reaches the teacher."""
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    losses = build_method(name, params)(StepOutputs(images=torch.zeros(5, 1), labels=torch.tensor([0, 1, 2, 3, 0]),
                                                    student_logits=s, teacher_logits=t))
    total = sum(losses.values()) if isinstance(losses, dict) else losses
    total.backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_ce_equals_direct():
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    out = StepOutputs(images=torch.zeros(6, 1), labels=labels, student_logits=logits)
    direct = -(logits.log_softmax(1)[torch.arange(6), labels]).mean()
    assert build_method("ce")(out).item() == pytest.approx(direct.item(), rel=1e-6)


def test_composer_weights_and_names():
    composer = Losses.from_config({"ce": 0.1, "kd": {"weight": 0.9, "T": 4}, "kd:soft": {"T": 8}})
    s, t, y = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    losses = composer(StepOutputs(images=torch.zeros(3, 1), labels=y, student_logits=s, teacher_logits=t))
    assert set(losses) == {"ce", "kd", "kd:soft"}
    ce = torch.nn.functional.cross_entropy(s, y)
    assert losses["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-6)
    assert losses["kd"].item() == kd_close(0.9 * direct_kd(s, t, 4.0), 4.0)
    assert losses["kd:soft"].item() == kd_close(direct_kd(s, t, 8.0), 8.0)
    assert composer.needs_teacher and composer.needs_labels


def test_unknown_method_names_the_key_and_suggests():
    from kdforge.methods.registry import UnknownMethodError

    with pytest.raises(UnknownMethodError) as info:
        Losses.from_config({"ce": 1.0, "kdd": 1.0})
    # the key path, the name, the closest method first among the suggestions, where to look
    assert re.fullmatch(r"losses\.kdd: unknown method 'kdd'\. Did you mean: kd(, [a-z_]+)*\? "
                        r"`kdforge methods` lists them all\.", str(info.value)), str(info.value)
    with pytest.raises(UnknownMethodError) as info:
        Losses.from_config({"kx:soft": {"T": 8}})  # a tagged key: the path keeps the tag, the name drops it
    assert str(info.value).startswith("losses.kx:soft: unknown method 'kx'.")


@pytest.mark.parametrize("losses, message", [
    ({"kd": {"temp": 3}}, "losses.kd.temp: method 'kd' has no parameter 'temp'. Parameters: T, "
                          "standardize (see `kdforge methods kd`)."),
    ({"kd": {"T": "hot"}}, "losses.kd.T: expected a number, got 'hot'"),
    ({"kd": {"T": -1}}, "losses.kd: kd: temperature T must be positive"),
    ({"kd": "heavy"}, "losses.kd: expected a weight (a number), got 'heavy'"),
])
def test_loss_config_errors(losses, message):
    with pytest.raises(ConfigError) as info:
        Losses.from_config(losses)
    assert str(info.value) == message


def test_registry_has_foundation_methods():
    assert {"ce", "kd"} <= set(method_names())
