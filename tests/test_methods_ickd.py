"""ICKD against its formula written out by hand, its invariances and its gradient routing."""

import math

import pytest
import torch

from kdforge.methods import StepOutputs, build_method
from kdforge.methods.ickd import ickd_loss


def direct_gram(f):
    """Row-normalised channel Gram matrix of one image's (C, H, W) map, by hand."""
    rows = [list(map(float, ch.flatten().tolist())) for ch in f]
    g = [[sum(a * b for a, b in zip(r, q)) for q in rows] for r in rows]
    return [[v / max(math.sqrt(sum(x * x for x in row)), 1e-12) for v in row] for row in g]


def direct_ickd(f_s, f_t):
    b, c = f_t.shape[:2]
    total = 0.0
    for i in range(b):
        gs, gt = direct_gram(f_s[i]), direct_gram(f_t[i])
        total += sum((x - y) ** 2 for rs, rt in zip(gs, gt) for x, y in zip(rs, rt))
    return total / (c * b)


def test_ickd_equals_the_formula_for_maps_of_different_sizes():
    f_s, f_t = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 2, 3)  # only the channels must agree
    assert ickd_loss(f_s, f_t).item() == pytest.approx(direct_ickd(f_s, f_t), rel=1e-4, abs=1e-6)


def test_ickd_ignores_where_in_the_map_and_the_overall_scale():
    f_s, f_t = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    base = ickd_loss(f_s, f_t).item()
    permuted = f_s.flatten(2)[:, :, torch.randperm(16)].view_as(f_s)  # the same pixels, elsewhere
    assert ickd_loss(permuted, f_t).item() == pytest.approx(base, rel=1e-4)
    assert ickd_loss(f_s * 7.0, f_t * 0.3).item() == pytest.approx(base, rel=1e-4)
    assert ickd_loss(f_t.clone(), f_t).item() == pytest.approx(0.0, abs=1e-6)


def make(s_ch=3, t_ch=5):
    method = build_method("ickd", {"teacher_layers": ["t"], "student_layers": ["s"]})
    method.teacher_layers, method.student_layers = ["t"], ["s"]
    f_s = torch.randn(4, s_ch, 6, 6, requires_grad=True)
    f_t = torch.randn(4, t_ch, 3, 3, requires_grad=True)
    out = StepOutputs(images=torch.zeros(4, 1), labels=None, student_logits=torch.zeros(4, 2),
                      teacher_logits=torch.zeros(4, 2), student_features={"s": f_s}, teacher_features={"t": f_t})
    method.setup(None, None, out)
    return method, out, f_s, f_t


def test_ickd_embeds_the_student_to_the_teachers_channels_and_trains_only_the_student_side():
    method, out, f_s, f_t = make()
    loss = method(out)
    assert loss.item() == pytest.approx(ickd_loss(method.embeds[0](f_s), f_t).item(), rel=1e-5)
    loss.backward()
    assert f_t.grad is None
    assert f_s.grad.abs().sum() > 0 and method.embeds[0][0].weight.grad.abs().sum() > 0


def test_ickd_refuses_vectors_naming_both_layers():
    method = build_method("ickd", {})
    method.teacher_layers, method.student_layers = ["fc_t"], ["fc_s"]
    out = StepOutputs(images=torch.zeros(2, 1), labels=None, student_logits=torch.zeros(2, 2),
                      teacher_logits=torch.zeros(2, 2), student_features={"fc_s": torch.zeros(2, 8)},
                      teacher_features={"fc_t": torch.zeros(2, 8)})
    with pytest.raises(Exception, match="fc_t.*fc_s"):
        method.setup(None, None, out)
