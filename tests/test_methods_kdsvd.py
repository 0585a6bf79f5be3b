"""KD-SVD: its pieces against direct computations, its invariances (pixel order, scale of a map), zero for the
teacher's own maps, the refusal of unequal channels, gradient routing."""

import math

import numpy as np
import pytest
import torch

from kdforge.errors import LayerError
from kdforge.methods import build_method
from kdforge.methods.kdsvd import align_to, rbf, top_singular
from kdforge.models import build_model


def test_top_singular_is_numpys_svd_up_to_sign():
    f = torch.randn(2, 5, 3, 3)
    v, s = top_singular(f, 2)
    for b in range(2):
        x = f[b].reshape(5, 9).T.double().numpy()  # (H*W) x C
        _, sv, vh = np.linalg.svd(x, full_matrices=False)
        for j in range(2):
            assert abs(abs(float(v[b, :, j] @ torch.from_numpy(vh[j]).float())) - 1) < 1e-4
        assert np.allclose(s[b].numpy(), sv[:2] / np.linalg.norm(sv[:2]), atol=1e-5)


def test_align_picks_the_closest_student_vector_with_its_sign_and_rbf_is_the_kernel():
    v_t = torch.tensor([[[1.0], [0.0], [0.0]]])                       # (1, C=3, k_t=1)
    v_s = torch.tensor([[[0.0, -0.9, 0.1], [1.0, 0.1, 0.0], [0.0, 0.4, 0.99]]])  # (1, 3, 3)
    assert torch.allclose(align_to(v_s, v_t), torch.tensor([[[0.9], [-0.1], [-0.4]]]))  # column 1, sign flipped
    a, b = torch.randn(1, 2, 1), torch.randn(1, 3, 1)
    k = rbf(a, b)
    assert k.shape == (1, 2, 3, 1)
    assert k[0, 1, 2, 0].item() == pytest.approx(math.exp(-(a[0, 1, 0] - b[0, 2, 0]).item() ** 2 / 8))


def bound(tapped_outputs, teacher="resnet20", student="resnet8", batch=3):
    t, s = build_model(teacher, num_classes=10).eval(), build_model(student, num_classes=10)
    method = build_method("kdsvd")
    method.bind(s, t)
    out = tapped_outputs(method, s, t, torch.randn(batch, 3, 32, 32))
    return method, out, s, t


def test_kdsvd_is_zero_for_the_teachers_maps_and_blind_to_pixel_order_and_scale(tapped_outputs):
    method, out, s, t = bound(tapped_outputs)
    method.setup(s, t, out)
    assert method.student_layers == ["layer1", "layer2", "layer3"]
    same = dict(out.teacher_features)
    own = method(type(out)(**{**out.__dict__, "student_features": {k: v for k, v in zip(method.student_layers,
                                                                                           same.values())}}))
    assert own.item() == pytest.approx(0.0, abs=1e-6)
    base = method(out).item()
    assert base > 1e-4
    changed = {}
    for name, f in out.student_features.items():
        h, w = f.shape[-2:]
        order = torch.randperm(h * w)
        changed[name] = f.flatten(2)[:, :, order].view_as(f) * 5.0  # the same pixels elsewhere, 5x brighter
    again = method(type(out)(**{**out.__dict__, "student_features": changed}))
    assert again.item() == pytest.approx(base, rel=1e-3, abs=1e-5)


def test_kdsvd_trains_only_the_student_and_refuses_unequal_channels(tapped_outputs):
    method, out, s, t = bound(tapped_outputs)
    method.setup(s, t, out)
    method(out).backward()
    assert all(p.grad is None for p in t.parameters())
    grads = [p.grad for p in s.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    method, out, s, t = bound(tapped_outputs, teacher="wrn_40_2", student="wrn_16_1")
    with pytest.raises(LayerError, match="same channels"):
        method.setup(s, t, out)
