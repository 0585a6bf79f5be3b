"""ReviewKD: the hierarchical context loss and the attention-based fusion against direct computations,
its default layers, the review path (shallow levels learn from deeper student levels), gradient routing."""

from dataclasses import replace

import pytest
import torch

from kdforge.methods import build_method
from kdforge.methods.reviewkd import ABF, hcl_loss
from kdforge.models import build_model


def block_mean(x, level):
    """Average pool to level x level by reshaping (the map's side divisible by `level`)."""
    n, c, h, w = x.shape
    return x.view(n, c, level, h // level, level, w // level).mean(dim=(3, 5))


@pytest.mark.parametrize("side, levels", [(8, (4, 2, 1)), (4, (2, 1)), (1, ())])
def test_hcl_is_the_weighted_mse_over_the_smaller_pooling_levels(side, levels):
    f_s, f_t = torch.randn(2, 3, side, side), torch.randn(2, 3, side, side)
    terms, weights = [((f_s - f_t) ** 2).mean()], [1.0]
    for k, level in enumerate(levels, start=1):
        terms.append(((block_mean(f_s, level) - block_mean(f_t, level)) ** 2).mean())
        weights.append(0.5 ** k)
    want = sum(w * t for w, t in zip(weights, terms)) / sum(weights)
    assert hcl_loss(f_s, f_t).item() == pytest.approx(want.item(), rel=1e-5)


def test_abf_with_open_gates_adds_the_upsampled_deeper_map_then_resizes_to_the_teacher():
    abf = ABF(3, 4, 5, fuse=True).eval()
    with torch.no_grad():
        abf.gates[0].weight.zero_()
        abf.gates[0].bias.fill_(30.0)  # sigmoid(30) = 1: both gates fully open
    x, deeper = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)
    out, fused = abf(x, deeper, (8, 8))
    up = deeper.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest, by hand
    want = (abf.reduce(x) + up).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert torch.allclose(fused, want, atol=1e-5)
    assert torch.allclose(out, abf.out(want), atol=1e-5) and out.shape == (2, 5, 8, 8)


def bound(teacher="resnet20", student="resnet8", **params):
    t, s = build_model(teacher, num_classes=10), build_model(student, num_classes=10)
    method = build_method("reviewkd", {"warmup": 0, **params})
    method.bind(s, t)
    return method, s, t


def test_default_layers_are_the_stage_ends_and_the_embedding_paired_from_the_deepest():
    method, _, _ = bound()
    assert method.student_layers == ["layer1", "layer2", "layer3", "fc:input"]
    assert method.teacher_layers[-1] == "fc:input" and len(method.teacher_layers) == 4
    assert all(t.endswith(".out_relu:input") for t in method.teacher_layers[:3])  # before the stage's last ReLU
    vgg, _, _ = bound(teacher="vgg8")  # 5 teacher stages, 3 student stages: the 3 deepest are used
    assert len(vgg.teacher_layers) == 4 and vgg.teacher_layers[0].startswith("layer3.")


def test_review_path_routing_and_warmup(tapped_outputs):
    torch.manual_seed(0)
    method, s, t = bound()
    images = torch.randn(4, 3, 32, 32)
    out = tapped_outputs(method, s, t, images)
    method.setup(s, t, out)
    fused = {}
    for i, abf in enumerate(method.abfs):
        abf.register_forward_hook(lambda m, a, r, i=i: fused.__setitem__(i, r[0].detach().clone()))
    loss = method(out)
    first = dict(fused)
    deepest = method.student_layers[-1]
    shallowest = method.student_layers[0]
    changed = dict(out.student_features, **{deepest: out.student_features[deepest] + 1.0})
    method(replace(out, student_features=changed))
    assert not torch.allclose(fused[0], first[0])  # the shallowest level reviews the deepest student features
    changed = dict(out.student_features, **{shallowest: out.student_features[shallowest] + 1.0})
    method(replace(out, student_features=changed))
    assert torch.allclose(fused[len(method.abfs) - 1], first[len(method.abfs) - 1])  # never the other way
    loss.backward()
    assert all(p.grad is None for p in t.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
    assert all(p.grad is not None for p in method.abfs.parameters())
    ramped = build_method("reviewkd", {"warmup": 20})
    ramped.bind(s, t)
    ramped.load_state_dict(method.state_dict(), strict=False)
    ramped.setup(s, t, out)
    ramped.load_state_dict(method.state_dict())
    with torch.no_grad():
        assert ramped(out).item() == pytest.approx(method(out).item() / 20, rel=1e-5)  # epoch 0: factor 1/20
