"""NetGraft's VGG-16 without BN in the convs (Shen et al., AAAI 2021, arXiv 2012.04915):
``vgg16_nobn`` (teacher) and ``vgg16_nobn_thin`` (student), checked against independent
computations: the paper's layout written out here, and a functional re-implementation."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdforge.models import build_model, count_parameters, model_info

NAMES = ("vgg16_nobn", "vgg16_nobn_thin")
# the paper's layout, per stage; the student thins stages 4 and 5 to 256 channels
LAYOUT = {
    "vgg16_nobn": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg16_nobn_thin": [[64, 64], [128, 128], [256, 256, 256], [256, 256, 256], [256, 256, 256]],
}


def _x(batch=2, side=32, seed=0):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _model(name, width=1.0):
    torch.manual_seed(0)
    return build_model(name, num_classes=100, width=width).eval()


def _conv_pairs(model):
    return [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]


def _expected_pairs(name, width):
    pairs, c_in = [], 3
    for stage in LAYOUT[name]:
        for c in stage:
            c_out = max(1, round(c * width))
            pairs.append((c_in, c_out))
            c_in = c_out
    return pairs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("width", [1.0, 0.25, 0.001])
def test_no_batchnorm2d_and_paper_conv_layout(name, width):
    model = _model(name, width)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert _conv_pairs(model) == _expected_pairs(name, width)
    if width == 0.25:
        assert _conv_pairs(model)[-1] == ((128, 128) if name == "vgg16_nobn" else (64, 64))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.kernel_size == (3, 3) and m.padding == (1, 1) and m.stride == (1, 1) and m.bias is not None
    assert model.block_names == [f"layer{i + 1}.{j}" for i, s in enumerate(LAYOUT[name]) for j in range(len(s))]
    assert model.stage_names == [f"layer{i}" for i in range(1, 6)]


def test_options_and_parameter_counts():
    for name in NAMES:
        assert model_info(name).options() == {"width": 1.0}
    assert count_parameters(_model("vgg16_nobn")) == 15_029_668
    assert count_parameters(_model("vgg16_nobn_thin")) == 5_458_852
    assert build_model("vgg16_nobn", num_classes=10, width=0.25).fc.in_features == 128


@pytest.mark.parametrize("name", NAMES)
def test_stages_end_with_their_pool(name):
    model = _model(name, 0.25)
    sides = {}
    handles = [model.get_submodule(s).register_forward_hook(lambda m, a, o, s=s: sides.update({s: o.shape[-2:]}))
               for s in model.stage_names]
    with torch.no_grad():
        model(_x())
    for h in handles:
        h.remove()
    assert [tuple(sides[s]) for s in model.stage_names] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    for s in model.stage_names:
        names = [n for n, _ in model.get_submodule(s).named_children()]
        pool = model.get_submodule(f"{s}.pool")
        assert names[-1] == "pool" and isinstance(pool, nn.MaxPool2d)
        assert pool.kernel_size == 2 and pool.stride == 2


def test_head_structure():
    teacher, student = _model("vgg16_nobn"), _model("vgg16_nobn_thin")
    tops = lambda m: [(n, type(c)) for n, c in m.named_children() if not n.startswith("layer")]  # noqa: E731
    assert tops(teacher) == [("avgpool", nn.AdaptiveAvgPool2d), ("fc_hidden", nn.Linear),
                             ("fc_bn", nn.BatchNorm1d), ("fc", nn.Linear)]
    assert tops(student) == [("avgpool", nn.AdaptiveAvgPool2d), ("fc_hidden", nn.Linear), ("fc", nn.Linear)]
    assert (teacher.fc_hidden.in_features, teacher.fc_hidden.out_features) == (512, 512)
    assert teacher.fc_bn.num_features == 512
    assert (teacher.fc.in_features, teacher.fc.out_features) == (512, 100)
    assert (student.fc_hidden.in_features, student.fc_hidden.out_features) == (256, 512)
    assert (student.fc.in_features, student.fc.out_features) == (512, 100)
    assert teacher.classifier_name == student.classifier_name == "fc"
    # order of the head's calls
    for model, expected in ((teacher, ["fc_hidden", "fc_bn", "fc"]), (student, ["fc_hidden", "fc"])):
        order = []
        handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: order.append(n))
                   for n in ("fc_hidden", "fc", *(["fc_bn"] if len(expected) == 3 else []))]
        with torch.no_grad():
            model(_x())
        for h in handles:
            h.remove()
        assert order == expected


def test_initialisation():
    for name in NAMES:
        model = _model(name)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == 2
        for m in linears:  # >= 51,200 draws: the std estimate is within ~0.3% of 0.01
            assert abs(m.weight.std().item() - 0.01) < 5e-4 and abs(m.weight.mean().item()) < 5e-4
            assert torch.count_nonzero(m.bias) == 0
        for m in model.modules():
            if isinstance(m, nn.Conv2d):  # kaiming normal, fan_out: std sqrt(2 / (9 * out))
                expected = (2.0 / (9 * m.out_channels)) ** 0.5
                assert abs(m.weight.std().item() / expected - 1) < 0.05
                assert torch.count_nonzero(m.bias) == 0
    bn = _model("vgg16_nobn").fc_bn
    assert torch.equal(bn.weight, torch.ones(512)) and torch.equal(bn.bias, torch.zeros(512))


def test_teacher_stages_1_to_3_load_into_the_student():
    torch.manual_seed(1)
    teacher = build_model("vgg16_nobn").eval()
    student = build_model("vgg16_nobn_thin").eval()
    early = ("layer1.", "layer2.", "layer3.")
    t_sd = {k: v for k, v in teacher.state_dict().items() if k.startswith(early)}
    s_sd = {k: v for k, v in student.state_dict().items() if k.startswith(early)}
    assert t_sd and {k: v.shape for k, v in t_sd.items()} == {k: v.shape for k, v in s_sd.items()}
    assert any(not torch.equal(t_sd[k], s_sd[k]) for k in t_sd)  # different draws before loading
    result = student.load_state_dict(t_sd, strict=False)
    assert not result.unexpected_keys and not [k for k in result.missing_keys if k.startswith(early)]
    assert result.missing_keys  # layer4, layer5 and the head stay the student's own
    x = _x()
    with torch.no_grad():
        t3 = teacher.layer3(teacher.layer2(teacher.layer1(x)))
        s3 = student.layer3(student.layer2(student.layer1(x)))
    assert t3.shape == (2, 256, 4, 4) and torch.equal(s3, t3)


def _functional(model, x, name):
    """The forward written out on the model's own weights (eval mode), by parameter name."""
    sd = model.state_dict()
    for i, stage in enumerate(LAYOUT[name], start=1):
        for j in range(len(stage)):
            x = F.relu(F.conv2d(x, sd[f"layer{i}.{j}.conv.weight"], sd[f"layer{i}.{j}.conv.bias"], padding=1))
        x = F.max_pool2d(x, 2, 2)
    x = F.linear(x.mean(dim=(2, 3)), sd["fc_hidden.weight"], sd["fc_hidden.bias"])
    if name == "vgg16_nobn":
        x = F.batch_norm(x, sd["fc_bn.running_mean"], sd["fc_bn.running_var"], sd["fc_bn.weight"],
                         sd["fc_bn.bias"], training=False, eps=1e-5)
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("side", [32, 64])
def test_forward_matches_functional_reimplementation(name, side):
    torch.manual_seed(2)
    model = build_model(name, width=0.25).eval()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.01)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
        x = _x(side=side)
        out = model(x)
        expected = _functional(model, x, name)
    assert out.shape == (2, 100) and expected.abs().max() > 0
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_too_small_inputs_raise_a_clear_error(name):
    model = _model(name, 0.25)
    for h, w in ((31, 31), (16, 16), (32, 20), (2, 2)):
        with pytest.raises(ValueError, match=rf"{name}: input too small.*at least 32x32"):
            model(torch.randn(1, 3, h, w))
    with pytest.raises(ValueError, match=rf"{name}: .*layer5 got a 1x1 map"):
        model.forward_from(3, torch.randn(1, model.layer5[0].conv.in_channels, 1, 1))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 100)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_channels_last_bf16_and_determinism(name):
    torch.manual_seed(3)
    model = build_model(name, num_classes=10, width=0.25)  # train mode: BN1d uses batch statistics
    F.cross_entropy(model(_x(batch=4)), torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.parameters())
    # a bias right before a batch-statistics BN1d gets (numerically) zero gradient: the BN removes it
    exempt = {"fc_hidden.bias"} if name == "vgg16_nobn" else set()
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n not in exempt)

    # channels-last and bf16 autocast: tests/test_models.py::test_channels_last_and_bf16_autocast

    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, width=0.25).state_dict()

    first, second, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
