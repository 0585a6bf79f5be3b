"""VID, RKD, AB, FT and OH: each loss against a direct computation of the paper's formula,
gradients, invariances, default layers on zoo pairs, and the pre-training stages of AB and FT."""

import json
import math

import pytest
import torch
from torch import nn

from kdforge.errors import LayerError
from kdforge.features import FeatureTaps
from kdforge.methods import StepOutputs, build_method
from kdforge.methods.ft import factor_loss
from kdforge.methods.oh import gaussian_margin
from kdforge.models import build_model


def outputs(teacher: dict, student: dict) -> StepOutputs:
    n = next(iter(student.values())).shape[0]
    return StepOutputs(images=torch.zeros(n, 3, 8, 8), labels=None, student_logits=torch.zeros(n, 10),
                       teacher_logits=torch.zeros(n, 10), student_features=student, teacher_features=teacher)


def prepared(name: str, teacher: dict, student: dict, **params):
    """Method `name` with layers named after the dict keys (paired in order), set up on these features."""
    method = build_method(name, params)
    method.teacher_layers, method.student_layers = list(teacher), list(student)
    out = outputs(teacher, student)
    with torch.no_grad():
        method.setup(None, None, out)
    return method, out


def total(value) -> torch.Tensor:
    return sum(value.values()) if isinstance(value, dict) else value


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ----------------------------------------------------------------------------- VID
def test_vid_equals_gaussian_nll_written_out():
    t0, s0 = torch.randn(3, 4, 4, 4), torch.randn(3, 5, 8, 8)  # student map twice as large: pooled
    t1, s1 = torch.randn(3, 6), torch.randn(3, 7)  # vectors: 1x1 maps
    method, out = prepared("vid", {"t0": t0, "t1": t1}, {"s0": s0, "s1": s1}, eps=1e-5)
    with torch.no_grad():
        for raw in method.raw_variances:
            raw.copy_(torch.randn_like(raw))
    loss = method(out).item()

    direct = 0.0
    pooled = s0.reshape(3, 5, 4, 2, 4, 2).mean(dim=(3, 5))
    for reg, raw, t, s in [(method.regressors[0], method.raw_variances[0], t0, pooled),
                           (method.regressors[1], method.raw_variances[1], t1[:, :, None, None],
                            s1[:, :, None, None])]:
        with torch.no_grad():
            mu = reg(s).double()
        t = t.double()
        nll = 0.0
        for c in range(t.shape[1]):
            var = math.log1p(math.exp(raw[c].item())) + 1e-5
            nll += (0.5 * math.log(var) + (t[:, c] - mu[:, c]).pow(2) / (2 * var)).sum().item()
        direct += nll / t.numel()
    assert loss == pytest.approx(direct, rel=1e-5)


def test_vid_gradients_reach_student_and_adapters_not_teacher():
    t = torch.randn(2, 4, 4, 4, requires_grad=True)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    method, out = prepared("vid", {"t": t}, {"s": s})
    method(out).backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())


def test_vid_perfect_mean_leaves_half_log_variance():
    """mu(s) == t exactly: the loss is 0.5 log sigma^2, sigma^2 = init_variance at the start."""
    t = torch.rand(2, 3, 4, 4)
    method, out = prepared("vid", {"t": t}, {"s": t.clone()}, init_variance=2.5)
    assert torch.allclose(method.variance(0), torch.full((3,), 2.5))
    with torch.no_grad():
        for conv in method.regressors[0].net:
            if isinstance(conv, nn.Conv2d):
                conv.weight.copy_(torch.eye(3)[:, :, None, None])
                conv.bias.zero_()
    assert method(out).item() == pytest.approx(0.5 * math.log(2.5), rel=1e-5)


# ----------------------------------------------------------------------------- RKD
def direct_rkd(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    """(L_D, L_A) by loops over ordered pairs and triplets of distinct samples, in float64."""
    s, t = s.double().tolist(), t.double().tolist()
    n = len(s)

    def dist(e, i, j):
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(e[i], e[j])))

    def cos(e, i, j, k):  # angle at e_j
        u = [a - b for a, b in zip(e[i], e[j])]
        v = [a - b for a, b in zip(e[k], e[j])]
        return sum(a * b for a, b in zip(u, v)) / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    mu_s = sum(dist(s, i, j) for i, j in pairs) / len(pairs)
    mu_t = sum(dist(t, i, j) for i, j in pairs) / len(pairs)
    l_d = sum(huber(dist(s, i, j) / mu_s - dist(t, i, j) / mu_t) for i, j in pairs) / len(pairs)
    triplets = [(i, j, k) for i in range(n) for j in range(n) for k in range(n) if len({i, j, k}) == 3]
    l_a = sum(huber(cos(s, i, j, k) - cos(t, i, j, k)) for i, j, k in triplets) / len(triplets)
    return l_d, l_a


def test_rkd_equals_distance_and_angle_losses_written_out():
    s, t = torch.randn(6, 3), torch.randn(6, 5) * 2
    method, out = prepared("rkd", {"t": t}, {"s": s})
    parts = method(out)
    l_d, l_a = direct_rkd(s, t)
    assert set(parts) == {"distance", "angle"}
    assert parts["distance"].item() == pytest.approx(25 * l_d, rel=1e-4)
    assert parts["angle"].item() == pytest.approx(50 * l_a, rel=1e-4)
    # feature maps are flattened per sample
    maps_method, maps_out = prepared("rkd", {"t": t.view(6, 5, 1, 1)}, {"s": s.view(6, 3, 1, 1)},
                                     distance_weight=1.0, angle_weight=0.0)
    maps_parts = maps_method(maps_out)
    assert set(maps_parts) == {"distance"}
    assert maps_parts["distance"].item() == pytest.approx(l_d, rel=1e-4)


def test_rkd_gradients_reach_student_not_teacher():
    t = torch.randn(5, 4, requires_grad=True)
    s = torch.randn(5, 3, requires_grad=True)
    method, out = prepared("rkd", {"t": t}, {"s": s})
    total(method(out)).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0 and torch.isfinite(s.grad).all()


def test_rkd_invariant_to_scale_translation_rotation_and_width():
    t = torch.randn(8, 4)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    s = 3.0 * t @ q[:4] + 2.0  # scaled, rotated into 6 dimensions, shifted
    method, out = prepared("rkd", {"t": t}, {"s": s})
    parts = method(out)
    assert parts["distance"].item() == pytest.approx(0.0, abs=1e-5)
    assert parts["angle"].item() == pytest.approx(0.0, abs=1e-5)
    other, other_out = prepared("rkd", {"t": t}, {"s": torch.randn(8, 4)})
    assert total(other(other_out)).item() > 0.1


def test_rkd_bf16_autocast_keeps_float32_accuracy():
    s, t = torch.randn(6, 3), torch.randn(6, 5)
    method, out = prepared("rkd", {"t": t}, {"s": s})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = method(out)
    l_d, l_a = direct_rkd(s, t)
    assert parts["angle"].dtype == torch.float32
    assert parts["angle"].item() == pytest.approx(50 * l_a, rel=1e-4)
    assert parts["distance"].item() == pytest.approx(25 * l_d, rel=1e-4)


# ----------------------------------------------------------------------------- AB
def direct_ab(r: torch.Tensor, t: torch.Tensor, margin: float) -> float:
    """Sum over elements: (r - m)^2 where the teacher fires and r < m, (r + m)^2 where it does not and r > -m."""
    result = 0.0
    for rv, tv in zip(r.flatten().tolist(), t.flatten().tolist()):
        if tv > 0:
            result += (rv - margin) ** 2 if rv < margin else 0.0
        else:
            result += (rv + margin) ** 2 if rv > -margin else 0.0
    return result


def test_ab_equals_alternative_loss_written_out():
    t0, s0 = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4)
    t1, s1 = torch.randn(2, 4, 2, 2), torch.randn(2, 2, 2, 2)
    method, out = prepared("ab", {"t0": t0, "t1": t1}, {"s0": s0, "s1": s1}, margin=0.7, pretrain_scale=0.01)
    loss = method(out).item()
    with torch.no_grad():
        r0, r1 = method.connectors[0](s0), method.connectors[1](s1)
    direct = (0.5 * direct_ab(r0, t0, 0.7) + 1.0 * direct_ab(r1, t1, 0.7)) / 2  # deepest pair weight 1, batch 2
    assert loss == pytest.approx(direct, rel=1e-5)
    assert method.pretrain_loss(out).item() == pytest.approx(0.01 * direct, rel=1e-5)
    assert isinstance(method.connectors[0][0], nn.Conv2d) and method.connectors[0][0].kernel_size == (1, 1)


def test_ab_gradients_reach_student_and_connector_not_teacher():
    t = torch.randn(2, 4, 4, 4, requires_grad=True)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    method, out = prepared("ab", {"t": t}, {"s": s})
    method(out).backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.connectors.parameters())


def test_ab_zero_when_boundaries_agree_with_margin():
    t = torch.randn(2, 3, 4, 4)
    method, out = prepared("ab", {"t": t}, {"s": torch.randn(2, 3, 4, 4)}, margin=1.0)
    method.connectors[0] = nn.Identity()
    agree = torch.where(t > 0, 1.5, -1.5)
    assert method(outputs({"t": t}, {"s": agree})).item() == 0.0
    # inside the margin band the loss is positive even with the right signs
    assert method(outputs({"t": t}, {"s": agree / 3})).item() > 0
    assert method(outputs({"t": t}, {"s": -agree})).item() == pytest.approx(
        direct_ab(-agree, t, 1.0) / 2, rel=1e-6)


# ----------------------------------------------------------------------------- FT
def test_ft_equals_l1_of_normalised_factors_written_out():
    t, s = torch.randn(3, 8, 4, 4).relu(), torch.randn(3, 6, 8, 8).relu()
    method, out = prepared("ft", {"t": t}, {"s": s}, rate=0.5)
    assert method.paraphrasers[0].encoder[-3].out_channels == 4  # k = 0.5 of 8 teacher channels
    loss = method(out).item()
    with torch.no_grad():
        f_t = method.paraphrasers[0].eval().encoder(t)
        f_s = method.translators[0](s).reshape(3, 4, 4, 2, 4, 2).mean(dim=(3, 5))  # pooled to 4x4
    direct = 0.0
    for b in range(3):
        u, v = f_s[b].flatten().double(), f_t[b].flatten().double()
        u, v = u / u.pow(2).sum().sqrt(), v / v.pow(2).sum().sqrt()
        direct += (u - v).abs().sum().item() / u.numel()
    assert loss == pytest.approx(direct / 3, rel=1e-5)
    # the stage before training: mean squared reconstruction error of the teacher's map
    rec = method.pretrain_loss(out).item()
    with torch.no_grad():
        direct_rec = (method.paraphrasers[0].train()(t) - t).pow(2).mean().item()
    assert rec == pytest.approx(direct_rec, rel=1e-5)


def test_ft_gradients_reach_student_and_translator_not_teacher_or_paraphraser():
    t = torch.randn(2, 4, 4, 4, requires_grad=True)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    method, out = prepared("ft", {"t": t}, {"s": s})
    method(out).backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.translators.parameters())
    assert all(p.grad is None and not p.requires_grad for p in method.paraphrasers.parameters())
    assert not method.paraphrasers.training
    # the stage before training trains the paraphraser, and only it
    params = method.pretrain_parameters(None)
    assert {id(p) for p in params} == {id(p) for p in method.paraphrasers.parameters()}
    assert all(p.requires_grad for p in params)


def test_factor_loss_scale_invariance_and_zero():
    f_s, f_t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert factor_loss(f_t, f_t).item() == 0.0
    assert factor_loss(5.0 * f_t, f_t).item() == pytest.approx(0.0, abs=1e-7)
    assert factor_loss(7.0 * f_s, 0.1 * f_t).item() == pytest.approx(factor_loss(f_s, f_t).item(), rel=1e-5)


# ----------------------------------------------------------------------------- OH
@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (1.0, 2.0), (-0.5, 0.3), (2.0, 0.8)])
def test_margin_is_expected_negative_response(mean, std):
    """E[x | x < 0] of N(mean, std^2) by numerical integration."""
    x = torch.linspace(mean - 14 * std, 0.0, 400_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((x - mean) / std) ** 2)
    expected = (torch.trapezoid(x * pdf, x) / torch.trapezoid(pdf, x)).item()
    assert gaussian_margin(torch.tensor([mean]), torch.tensor([std])).item() == pytest.approx(expected, rel=1e-4)


def test_margin_falls_back_to_minus_three_sigma():
    """Almost no negative responses (P < 0.001): -3 sigma, as the official code."""
    assert gaussian_margin(torch.tensor([5.0]), torch.tensor([1.0])).item() == pytest.approx(-3.0)
    assert gaussian_margin(torch.tensor([1.0]), torch.tensor([-2.0])).item() < 0  # |gamma| is the std


def direct_partial_l2(r: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> float:
    result = 0.0
    for c in range(t.shape[1]):
        m = margin.flatten()[c].item()
        for rv, tv in zip(r[:, c].flatten().tolist(), t[:, c].flatten().tolist()):
            target = max(tv, m)
            if rv > target or target > 0:
                result += (rv - target) ** 2
    return result


def test_oh_equals_partial_l2_written_out():
    t0, s0 = torch.randn(2, 3, 4, 4) + 0.3, torch.randn(2, 5, 4, 4)
    t1, s1 = torch.randn(2, 4, 2, 2) * 2, torch.randn(2, 2, 2, 2)
    method, out = prepared("oh", {"t0": t0, "t1": t1}, {"s0": s0, "s1": s1})
    # no teacher module given: margins from the batch statistics of the tapped maps
    assert method.margin_sources == ["batch statistics", "batch statistics"]
    for i, t in enumerate([t0, t1]):
        mean = torch.tensor([t[:, c].mean().item() for c in range(t.shape[1])])
        std = torch.tensor([t[:, c].std(unbiased=False).item() for c in range(t.shape[1])])
        assert torch.allclose(method.margin(i).flatten(), gaussian_margin(mean, std), rtol=1e-5)
    loss = method(out).item()
    with torch.no_grad():
        r0, r1 = method.connectors[0](s0), method.connectors[1](s1)
    direct = (0.5 * direct_partial_l2(r0, t0, method.margin(0)) + direct_partial_l2(r1, t1, method.margin(1))) / 2
    assert loss == pytest.approx(direct, rel=1e-5)


def test_oh_gradients_and_zero_loss_when_student_respects_margin():
    t = torch.randn(2, 4, 4, 4, requires_grad=True)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    method, out = prepared("oh", {"t": t}, {"s": s})
    method(out).backward()
    assert t.grad is None
    assert s.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.connectors.parameters())
    method.connectors[0] = nn.Identity()
    tt = t.detach()
    below = torch.where(tt > 0, tt, method.margin(0) - 0.3)  # positives matched, negatives below the margin
    assert method(outputs({"t": tt}, {"s": below})).item() == 0.0
    assert method(outputs({"t": tt}, {"s": tt})).item() == 0.0  # copying the teacher is optimal too
    relu_student = tt.relu()  # responses of 0 where the teacher is negative: above the margin, penalised
    assert method(outputs({"t": tt}, {"s": relu_student})).item() == pytest.approx(
        direct_partial_l2(relu_student, tt, method.margin(0)) / 2, rel=1e-6)
    assert method(outputs({"t": tt}, {"s": relu_student})).item() > 0


# ----------------------------------------------------------------------------- zoo pairs
@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    models = {name: build_model(name, 100) for name in ["resnet32x4", "resnet8x4", "vgg13", "mobilenetv2"]}
    for name in ["resnet32x4", "vgg13"]:
        models[name].eval().requires_grad_(False)
    return models


def preact(stages):
    return [f"{s}.out_relu:input" for s in stages]


EXPECTED = {
    ("vid", "resnet32x4"): (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
    ("vid", "vgg13"): (["layer2", "layer3", "layer4", "layer5"], ["layer2", "layer3", "layer5", "layer7"]),
    ("rkd", "resnet32x4"): (["fc:input"], ["fc:input"]),
    ("rkd", "vgg13"): (["fc:input"], ["fc:input"]),
    ("ab", "resnet32x4"): (preact(["layer1.4", "layer2.4", "layer3.4"]), preact(["layer1.0", "layer2.0", "layer3.0"])),
    ("ab", "vgg13"): (preact(["layer2.1", "layer3.1", "layer4.1", "layer5.1"]),
                      preact(["layer2.1", "layer3.2", "layer5.2", "layer7.0"])),
    ("ft", "resnet32x4"): (["layer3"], ["layer3"]),
    ("ft", "vgg13"): (["layer5"], ["layer7"]),
}
EXPECTED[("oh", "resnet32x4")] = EXPECTED[("ab", "resnet32x4")]
EXPECTED[("oh", "vgg13")] = EXPECTED[("ab", "vgg13")]
PAIRS = {"resnet32x4": "resnet8x4", "vgg13": "mobilenetv2"}


def run_on_zoo(method, teacher, student, images):
    """What the engine does: bind, a no-grad dry run (student in eval mode) + setup, then a training forward."""
    method.bind(student, teacher)
    with FeatureTaps(teacher, method.teacher_layers) as t_taps, FeatureTaps(student, method.student_layers) as s_taps:
        with torch.no_grad():
            student.eval()
            s_logits, s_feats = s_taps(images)
            t_logits, t_feats = t_taps(images)
            method.setup(student, teacher, StepOutputs(images, None, s_logits, t_logits, dict(s_feats),
                                                       dict(t_feats), student, teacher))
        student.train()
        with torch.no_grad():
            t_logits, t_feats = t_taps(images)
        s_logits, s_feats = s_taps(images)
        return method(StepOutputs(images, None, s_logits, t_logits, dict(s_feats), dict(t_feats), student, teacher))


@pytest.mark.parametrize("teacher_name", list(PAIRS))
@pytest.mark.parametrize("name", ["vid", "rkd", "ab", "ft", "oh"])
def test_default_layers_and_one_step_on_zoo_pairs(name, teacher_name, zoo):
    teacher, student = zoo[teacher_name], zoo[PAIRS[teacher_name]]
    student.zero_grad(set_to_none=True)
    method = build_method(name)
    loss = total(run_on_zoo(method, teacher, student, torch.randn(4, 3, 32, 32)))
    assert (method.teacher_layers, method.student_layers) == EXPECTED[(name, teacher_name)]
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_oh_margin_from_the_batchnorm_that_produces_the_tap(zoo):
    """VGG: the pre-ReLU map is a BN's output, so the margin comes from that BN's affine parameters;
    ResNet: the block's sum has no producing BN, so the margin comes from the batch statistics."""
    teacher, student = zoo["vgg13"], zoo["mobilenetv2"]
    bn = teacher.get_submodule("layer5.1.bn")
    saved = (bn.weight.clone(), bn.bias.clone())
    try:
        with torch.no_grad():
            bn.weight.copy_(torch.randn_like(bn.weight))
            bn.bias.copy_(torch.randn_like(bn.bias))
        method = build_method("oh", {"teacher_layers": ["layer5.1.out_relu:input"],
                                     "student_layers": ["layer7.0.out_relu:input"]})
        run_on_zoo(method, teacher, student, torch.randn(4, 3, 32, 32))
        assert method.margin_sources == ["layer5.1.bn"]
        assert torch.allclose(method.margin(0).flatten(), gaussian_margin(bn.bias, bn.weight.abs()))
    finally:
        with torch.no_grad():
            bn.weight.copy_(saved[0])
            bn.bias.copy_(saved[1])
    method = build_method("oh", {"teacher_layers": ["layer3.4.out_relu:input"],
                                 "student_layers": ["layer3.0.out_relu:input"]})
    images = torch.randn(4, 3, 32, 32)
    run_on_zoo(method, zoo["resnet32x4"], zoo["resnet8x4"], images)
    assert method.margin_sources == ["batch statistics"]
    with torch.no_grad(), FeatureTaps(zoo["resnet32x4"], ["layer3.4.out_relu:input"]) as taps:
        t = taps(images)[1]["layer3.4.out_relu:input"]
    flat = t.transpose(0, 1).flatten(1)
    assert torch.allclose(method.margin(0).flatten(), gaussian_margin(flat.mean(1), flat.std(1, unbiased=False)),
                          rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vid", "ab", "ft", "oh"])
def test_map_paired_with_vector_is_a_layer_error_naming_both(name, zoo):
    method = build_method(name, {"teacher_layers": ["layer3"], "student_layers": ["fc:input"]})
    with pytest.raises(LayerError) as info:
        run_on_zoo(method, zoo["resnet32x4"], zoo["resnet8x4"], torch.randn(2, 3, 32, 32))
    assert "layer3" in str(info.value) and "fc:input" in str(info.value)


@pytest.mark.parametrize("name", ["vid", "rkd", "ab", "ft", "oh"])
def test_unequal_given_layer_lists_are_a_layer_error(name, zoo):
    method = build_method(name, {"teacher_layers": ["layer2", "layer3"], "student_layers": ["layer3"]})
    with pytest.raises(LayerError):
        method.bind(zoo["resnet8x4"], zoo["resnet32x4"])


def test_ab_pretrain_parameters_stop_at_the_deepest_hint(zoo):
    student = zoo["resnet8x4"]
    method = build_method("ab", {"teacher_layers": ["layer2.4.out_relu:input"],
                                 "student_layers": ["layer2.0.out_relu:input"]})
    run_on_zoo(method, zoo["resnet32x4"], student, torch.randn(2, 3, 32, 32))
    names = {id(p): n for n, p in student.named_parameters()}
    chosen = [names[id(p)] for p in method.pretrain_parameters(student) if id(p) in names]
    assert chosen and all(n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"} for n in chosen)
    assert {n for n in names.values() if n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}} == set(chosen)
    connector_ids = {id(p) for p in method.connectors.parameters()}
    assert connector_ids <= {id(p) for p in method.pretrain_parameters(student)}
    default = build_method("ab")
    run_on_zoo(default, zoo["resnet32x4"], student, torch.randn(2, 3, 32, 32))
    chosen = {names[id(p)] for p in default.pretrain_parameters(student) if id(p) in names}
    assert chosen == {n for n in names.values() if not n.startswith("fc.")}


# ----------------------------------------------------------------------------- pre-training stages in the engine
@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(128, 64)


def make_trainer(tmp_path, digits, losses):
    from kdforge.config import config_from_dict
    from kdforge.engine import Trainer
    from kdforge.engine.run import build_zoo_model
    from kdforge.methods import Losses

    cfg = config_from_dict({
        "name": "run", "seed": 3, "output_dir": str(tmp_path), "losses": losses,
        "data": {"batch_size": 32, "eval_batch_size": 64, "augment": {"crop_padding": 2, "hflip": False}},
        "optim": {"lr": 0.05}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu"},
    })
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet14"}}).student, 10, 1, "teacher")
    return Trainer(student, Losses.from_config(cfg.losses), digits[0], digits[1], teacher=teacher,
                   config=cfg, run_dir=tmp_path / "run")


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit_recording_pretrain(trainer, monkeypatch):
    """fit(), with snapshots of student, teacher and methods around the engine's pre-training stages."""
    from kdforge.engine.hooks import PretrainStageHook

    snaps = {}
    run_stage = PretrainStageHook.run_stage

    def recorded(hook, tr):
        snaps["before"] = (snapshot(tr.student), snapshot(tr.teacher), snapshot(tr.losses))
        run_stage(hook, tr)
        snaps["after"] = (snapshot(tr.student), snapshot(tr.teacher), snapshot(tr.losses))

    monkeypatch.setattr(PretrainStageHook, "run_stage", recorded)
    trainer.fit()
    records = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    return snaps, [r for r in records if r["kind"] == "pretrain"]


def changed(a: dict, b: dict) -> set:
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_ab_initialisation_stage_trains_student_up_to_the_hint_and_connectors(tmp_path, digits, monkeypatch):
    """The usual setting: AB weight 0, so AB acts only through its stage before training."""
    trainer = make_trainer(tmp_path, digits, {
        "ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 2, "teacher_layers": ["layer2.1.out_relu:input"],
                          "student_layers": ["layer2.0.out_relu:input"]}})
    snaps, records = fit_recording_pretrain(trainer, monkeypatch)
    assert [(r["method"], r["epoch"]) for r in records] == [("ab", 1), ("ab", 2)]
    assert all(math.isfinite(r["loss"]) for r in records) and records[1]["loss"] < records[0]["loss"]
    (s0, t0, m0), (s1, t1, m1) = snaps["before"], snaps["after"]
    assert not changed(t0, t1)
    params = {n for n, _ in trainer.student.named_parameters()}
    up_to_hint = {n for n in params if n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}}
    assert changed(s0, s1) & params == up_to_hint  # layer3 and fc untouched
    connector = {k for k in m0 if k.startswith("methods.ab.connectors") and "running" not in k
                 and "num_batches" not in k}
    assert connector and connector <= changed(m0, m1)


def test_ft_paraphraser_stage_then_frozen_in_training(tmp_path, digits, monkeypatch):
    trainer = make_trainer(tmp_path, digits, {"ce": 1.0, "ft": {"weight": 200.0, "pretrain_epochs": 2}})
    snaps, records = fit_recording_pretrain(trainer, monkeypatch)
    assert [(r["method"], r["epoch"]) for r in records] == [("ft", 1), ("ft", 2)]
    assert all(math.isfinite(r["loss"]) for r in records) and records[1]["loss"] < records[0]["loss"]
    (s0, t0, m0), (s1, t1, m1) = snaps["before"], snaps["after"]
    assert not changed(t0, t1)
    params = {n for n, _ in trainer.student.named_parameters()}
    assert not changed(s0, s1) & params  # the student's weights wait for training
    para = {k for k in m0 if k.startswith("methods.ft.paraphrasers")}
    trans = {k for k in m0 if k.startswith("methods.ft.translators")}
    para_weights = {k for k in para if k.endswith((".weight", ".bias"))}
    assert para_weights <= changed(m0, m1)
    assert not changed(m0, m1) & trans
    # training: the translator learns, the paraphraser (weights and BN statistics) stays as pre-trained
    m2 = snapshot(trainer.losses)
    assert not changed(m1, m2) & para
    assert changed(m1, m2) & trans
