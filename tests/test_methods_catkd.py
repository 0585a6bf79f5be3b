"""CAT-KD: class activation maps against a direct computation, their link to the logits, gradient routing,
and the refusal of a head whose logits are not a linear map of the pooled features."""

import pytest
import torch

from kdforge.errors import LayerError
from kdforge.methods import build_method
from kdforge.methods.catkd import pooled_cams
from kdforge.models import build_model


def direct_cams(f, w, r, normalize):
    """Per class k: sum_c w[k, c] * F[c] over each of the r x r cells (mean over the cell's pixels), by hand."""
    n, c, h, wd = f.shape
    cams = torch.zeros(n, w.shape[0], r, r, dtype=torch.float64)
    for i in range(r):
        for j in range(r):
            cell = f[:, :, i * h // r:(i + 1) * h // r, j * wd // r:(j + 1) * wd // r].double().mean(dim=(2, 3))
            cams[:, :, i, j] = cell @ w.double().t()
    if normalize:
        cams = cams / cams.flatten(2).norm(dim=2)[:, :, None, None].clamp_min(1e-12)
    return cams


@pytest.mark.parametrize("normalize", [False, True])
def test_pooled_cams_are_the_classifier_on_each_cell(normalize):
    f, w = torch.randn(2, 6, 8, 8), torch.randn(5, 6)
    assert torch.allclose(pooled_cams(f, w, 2, normalize).double(), direct_cams(f, w, 2, normalize), atol=1e-5)


def test_catkd_maps_pool_to_the_logits_and_train_only_the_student(tapped_outputs):
    t, s = build_model("resnet20", num_classes=10).eval(), build_model("resnet8", num_classes=10)
    method = build_method("catkd", {"resolution": 1, "normalize": False})
    method.bind(s, t)
    assert method.student_layers == ["avgpool:input"]
    out = tapped_outputs(method, s, t, torch.randn(3, 3, 32, 32))
    method.setup(s, t, out)
    cams_t = pooled_cams(out.teacher_features["avgpool:input"], t.fc.weight, 1, False)
    assert torch.allclose(cams_t.flatten(1) + t.fc.bias, out.teacher_logits, atol=1e-4)  # 1x1 CAMs + bias = logits
    loss = build_method("catkd")  # the defaults: 2x2, normalised
    loss.bind(s, t)
    value = loss(out)
    want = ((pooled_cams(out.student_features["avgpool:input"], s.fc.weight, 2, True)
             - pooled_cams(out.teacher_features["avgpool:input"], t.fc.weight, 2, True)) ** 2).mean()
    assert value.item() == pytest.approx(want.item(), rel=1e-5)
    value.backward()
    assert all(p.grad is None for p in t.parameters())
    assert s.fc.weight.grad.abs().sum() > 0 and s.conv1.weight.grad.abs().sum() > 0


def test_catkd_refuses_a_head_with_a_hidden_layer(tapped_outputs):
    t, s = build_model("resnet20", num_classes=10).eval(), build_model("vgg16_nobn", num_classes=10, width=0.125)
    method = build_method("catkd")
    method.bind(s, t)
    out = tapped_outputs(method, s, t, torch.randn(2, 3, 32, 32))
    with pytest.raises(LayerError, match="student"):
        method.setup(s, t, out)
