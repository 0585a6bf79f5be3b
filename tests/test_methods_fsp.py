"""FSP against its formula written out by hand, its default taps, its refusal of unequal channels, and its
initialisation stage's parameters."""

import pytest
import torch

from kdforge.errors import LayerError
from kdforge.methods import build_method
from kdforge.methods.fsp import fsp_matrix
from kdforge.models import build_model


def direct_fsp(bottom, top):
    b, ci, h, w = bottom.shape
    cj = top.shape[1]
    g = torch.zeros(b, cj, ci, dtype=torch.float64)
    for n in range(b):
        for j in range(cj):
            for i in range(ci):
                g[n, j, i] = sum(float(top[n, j, y, x]) * float(bottom[n, i, y, x])
                                 for y in range(h) for x in range(w)) / (h * w)
    return g


def test_fsp_matrix_is_the_mean_product_over_positions_after_pooling_the_larger_map():
    bottom, top = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)
    pooled = bottom.view(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # 4x4 -> 2x2 by hand
    assert torch.allclose(fsp_matrix(bottom, top).double(), direct_fsp(pooled, top), atol=1e-5)


def test_fsp_loss_sums_the_flows_between_consecutive_taps(tapped_outputs):
    t, s = build_model("resnet20", num_classes=10).eval(), build_model("resnet8", num_classes=10)
    method = build_method("fsp")
    method.bind(s, t)
    assert method.student_layers == ["layer1:input", "layer1", "layer2", "layer3"]
    out = tapped_outputs(method, s, t, torch.randn(2, 3, 32, 32))
    method.setup(s, t, out)
    f_s = [out.student_features[n] for n in method.student_layers]
    f_t = [out.teacher_features[n] for n in method.teacher_layers]
    want = sum(((fsp_matrix(f_s[i], f_s[i + 1]) - fsp_matrix(f_t[i], f_t[i + 1])) ** 2).mean() for i in range(3))
    loss = method(out)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in t.parameters())
    stage = {id(p) for p in method.pretrain_parameters(s)}
    assert id(s.conv1.weight) in stage and id(s.fc.weight) not in stage  # the layers up to the deepest tap


def test_fsp_refuses_unequal_channels_naming_the_layers(tapped_outputs):
    t, s = build_model("wrn_40_2", num_classes=10).eval(), build_model("wrn_16_1", num_classes=10)
    method = build_method("fsp")
    method.bind(s, t)
    out = tapped_outputs(method, s, t, torch.randn(2, 3, 32, 32))
    with pytest.raises(LayerError, match="same channels") as info:
        method.setup(s, t, out)
    assert method.teacher_layers[1] in str(info.value) or method.teacher_layers[0] in str(info.value)
