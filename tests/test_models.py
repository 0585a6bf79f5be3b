"""The model zoo: registry, sizes, tap metadata and the hook contract of every model."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.models import (
    ModelInfo,
    UnknownModelError,
    build_model,
    count_macs,
    count_parameters,
    model_info,
    model_names,
    register_model,
)
from kdforge.models.complexity import format_macs
from kdforge.models.zoo_base import ZooModel
from kdforge.models.mobilenetv2 import MobileNetV2
from kdforge.models.resnet import ResNet
from kdforge.models.shufflenetv2 import ShuffleNetV2
from kdforge.models.vgg import VGG
from kdforge.models.vgg_nobn import VGGNoBN
from kdforge.models.wrn import WideResNet

# Exact parameter counts at 100 classes (1000 for the ImageNet models), each re-derived by
# hand from the architecture (see the module docstrings), e.g. resnet8x4:
# stem 3*32*9 + 64 = 928; layer1 18432+36864+2048 + 3*128 = 57,728;
# layer2 73728+147456+8192 + 3*256 = 230,144; layer3 294912+589824+32768 + 3*512 = 919,040;
# fc 256*100 + 100 = 25,700; total 1,233,540.
EXACT = {
    # resnet56 + switchable BN: a split BN of C channels used by n paths adds (n - 1) * 2C;
    # stage 2 (2C = 64): block 0 3 BNs x 3 extra paths, blocks 1-2 2 x 3, blocks 3-4 2 x 2,
    # blocks 5-6 2 x 1 -> 64 * (9 + 12 + 8 + 4) = 2,112; stage 3 (2C = 128): 4,224.
    "ddnn": 861_620 + 2_112 + 4_224,
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "vgg16_nobn": 15_029_668,  # see kdforge/models/vgg_nobn.py
    "vgg16_nobn_thin": 5_458_852,
    # vgg16_nobn_thin + a 1x1 conv with bias after layer4 and layer5: 2 * (256 * 256 + 256)
    "adapted": 5_458_852 + 131_584,
    "mobilenetv2": 812_836,
    "shufflenetv1": 949_258,
    "shufflenetv2": 1_355_528,
    "resnet18_imagenet": 11_689_512,
    "resnet34_imagenet": 21_797_672,
    "resnet50_imagenet": 25_557_032,
}

# Rounded millions as published (CRD, Tian et al. 2020 and the papers following its
# CIFAR-100 benchmark; torchvision for ImageNet).
PUBLISHED_M = {
    "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74,
    "resnet8x4": 1.23, "resnet32x4": 7.43, "resnet50": 23.71,
    "wrn_16_2": 0.70, "wrn_40_2": 2.26, "vgg8": 3.96, "vgg13": 9.46,
    "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36,
    "resnet18_imagenet": 11.69, "resnet34_imagenet": 21.80, "resnet50_imagenet": 25.56,
}

NAMES = model_names()
# one model per family (plus the CIFAR bottleneck ResNet) for the slower checks
FAMILY_SAMPLE = ["resnet8x4", "resnet50", "wrn_16_2", "vgg8", "mobilenetv2",
                 "shufflenetv1", "shufflenetv2", "resnet18_imagenet"]


def _classes(name: str) -> int:
    return 1000 if model_info(name).input_size == 224 else 100


def _example(name: str, batch: int = 2, channels: int = 3) -> torch.Tensor:
    side = 64 if model_info(name).input_size == 224 else 32  # small ImageNet inputs stay fast
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    """One eval-mode instance per model, shared by the read-only tests."""
    torch.manual_seed(0)
    return build_model(name, num_classes=_classes(name)).eval()


# ---------------------------------------------------------------- registry

def test_registry_lists_the_whole_zoo():
    assert NAMES == sorted(EXACT)
    for name in NAMES:
        info = model_info(name)
        assert isinstance(info, ModelInfo) and info.name == name
        assert info.input_size == (224 if name.endswith("_imagenet") else 32)
        assert info.family and info.paper and callable(info.builder)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError) as err:
        build_model("resnt8x4")
    assert "resnet8x4" in str(err.value) and "kdforge models" in str(err.value)
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownModelError):
        model_info("no_such_net")


def test_options_are_checked():
    with pytest.raises(ConfigError, match="zero_init_residual"):
        build_model("resnet8", zero_init_resdual=True)
    with pytest.raises(ConfigError):
        build_model("resnet8", num_classes=0)
    model = build_model("resnet8", zero_init_residual=True)
    assert all(model.get_submodule(b).bn2.weight.abs().sum() == 0 for b in model.block_names)


def test_register_rejects_duplicates_and_bad_sizes():
    with pytest.raises(ValueError):
        register_model("resnet8", family="x", input_size=32)(lambda **kw: nn.Linear(1, 1))
    with pytest.raises(ValueError):
        register_model("new_net", family="x", input_size=64)


# ---------------------------------------------------------------- sizes

@pytest.mark.parametrize("name", NAMES)
def test_parameter_count(name):
    count = count_parameters(_model(name))
    assert count == EXACT[name]
    if name in PUBLISHED_M:  # within one unit of the published last digit
        assert abs(count / 1e6 - PUBLISHED_M[name]) <= 0.01 + 1e-9


def test_macs_of_a_hand_built_model():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),          # out 8x8x8, 3*9 MACs each
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),          # depthwise: 9 MACs each
        nn.Conv2d(8, 4, 1, groups=2),                     # grouped 1x1: 4 MACs each
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 10),
    )
    expected = 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 4 * 8 * 8 * 4 + 4 * 10
    assert count_macs(model, 16) == expected
    assert model.training  # mode is restored


def test_macs_of_resnet8_cifar_by_formula():
    """resnet8 (one BasicBlock per stage, 16/32/64 channels, 1x1 projection shortcuts) counted by hand."""
    def conv(side, out_channels, in_channels, kernel):  # MACs of a conv with a side x side output
        return side * side * out_channels * in_channels * kernel * kernel

    expected = (conv(32, 16, 3, 3)                                            # stem
                + 2 * conv(32, 16, 16, 3)                                     # layer1: one block
                + conv(16, 32, 16, 3) + conv(16, 32, 32, 3) + conv(16, 32, 16, 1)  # layer2, with shortcut
                + conv(8, 64, 32, 3) + conv(8, 64, 64, 3) + conv(8, 64, 32, 1)     # layer3, with shortcut
                + 64 * 100)                                                   # classifier
    assert count_macs(_model("resnet8"), 32) == expected == 12_507_392


def test_format_macs_keeps_three_significant_digits():
    assert [format_macs(m) for m in (12_507_392, 50_000_000, 125_000_000, 1_814_073_344, 999_999,
                                      999_999_999, 3_456)] == \
        ["12.5 M", "50.0 M", "125 M", "1.81 G", "1.00 M", "1.00 G", "0.00346 M"]


def test_macs_of_resnet18_imagenet():
    macs = count_macs(_model("resnet18_imagenet"), 224)
    assert macs == 1_814_073_344  # 1,813,561,344 in convs + 512,000 in fc
    assert abs(macs - 1.82e9) / 1.82e9 < 0.01


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes(name):
    assert _model(name)(_example(name)).shape == (2, _classes(name))
    model = build_model(name, num_classes=10, in_channels=1)  # train mode
    out = model(_example(name, channels=1))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_tap_metadata_and_single_calls(name):
    """Tap names exist, stages shrink, the classifier sees (B, features), no module runs twice."""
    model = _model(name)
    assert isinstance(model, ZooModel) and model.input_size == model_info(name).input_size
    modules = dict(model.named_modules())
    assert isinstance(modules[model.classifier_name], nn.Linear)
    assert model.stage_names and model.block_names
    for block in model.block_names:
        assert f"{block}.out_relu" in modules
    assert len(set(model.block_names)) == len(model.block_names)
    order = list(modules)
    assert [order.index(b) for b in model.block_names] == sorted(order.index(b) for b in model.block_names)

    calls: Counter[str] = Counter()
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}

    def hook(module, args, output, name):
        calls[name] += 1
        outputs[name] = output
        inputs[name] = args[0]

    handles = [m.register_forward_hook(functools.partial(hook, name=n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(_example(name))
    finally:
        for handle in handles:
            handle.remove()

    assert max(calls.values()) == 1, [n for n, c in calls.items() if c > 1]
    other_paths = ".paths."  # a depth-dynamic net's full path leaves the sub-nets' own BNs unused
    for n, m in modules.items():
        if other_paths in n and not n.endswith(f".paths.{getattr(model, 'full_name', '')}"):
            assert calls[n] == 0, f"{n} belongs to another path but was called"
        elif any(True for _ in m.parameters(recurse=False)) or isinstance(m, nn.ReLU):
            assert calls[n] == 1, f"{n} was not called"
    sides = [outputs[s].shape[-1] for s in model.stage_names]
    assert all(a >= b for a, b in zip(sides, sides[1:])) and sides[0] > sides[-1]
    embedding = inputs[model.classifier_name]
    assert embedding.shape == (2, modules[model.classifier_name].in_features)
    for block in model.block_names:  # every block runs and its pre-activation can be tapped
        assert calls[block] == 1 and calls[f"{block}.out_relu"] == 1


def test_no_inplace_modules():
    for name in NAMES:
        for mod_name, module in _model(name).named_modules():
            assert not getattr(module, "inplace", False), f"{name}.{mod_name} is in-place"


def test_block_preactivation_taps():
    """`<block>.out_relu:input` is the block's pre-activation output."""
    model = _model("resnet8")
    block = model.layer2[0]
    seen = {}
    handle = block.out_relu.register_forward_pre_hook(lambda m, args: seen.update(pre=args[0]))
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        out = block(x)
        expected = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x))))) + block.downsample(x)
    handle.remove()
    torch.testing.assert_close(seen["pre"], expected)
    assert seen["pre"].min() < 0 and torch.equal(out, torch.relu(seen["pre"]))

    # ShuffleNetV2 applies one ReLU after the concat: exact because the kept half is >= 0
    model = _model("shufflenetv2")
    pre = {}
    handles = [model.get_submodule(f"{b}.out_relu").register_forward_pre_hook(
        lambda m, args, b=b: pre.update({b: args[0]})) for b in model.block_names]
    with torch.no_grad():
        model(_example("shufflenetv2"))
    for h in handles:
        h.remove()
    for b in model.block_names:
        unit = model.get_submodule(b)
        if hasattr(unit, "split"):
            assert pre[b][:, : unit.split].min() >= 0


def test_vgg_tiny_imagenet_pooling():
    model = _model("vgg8")
    shapes = {}
    handle = model.layer5.register_forward_hook(lambda m, a, o: shapes.update(s=o.shape))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 100)
    handle.remove()
    assert shapes["s"][-1] == 4  # 64 -> 32 -> 16 -> 8 -> pool4 -> 4, as at 32x32


@pytest.mark.parametrize("name", [*FAMILY_SAMPLE, "vgg16_nobn", "vgg16_nobn_thin"])
def test_channels_last_and_bf16_autocast(name):
    model = _model(name)
    x = _example(name)
    with torch.no_grad():
        reference = model(x)
        last = model(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(last, reference, rtol=1e-4, atol=1e-4)
    assert low.shape == reference.shape and torch.isfinite(low).all()


@pytest.mark.parametrize("name", FAMILY_SAMPLE)
def test_build_is_deterministic(name):
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name).state_dict()

    first, second, other = weights(1), weights(1), weights(2)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_training_step_reaches_every_parameter():
    model = build_model("shufflenetv1", num_classes=10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------- forward_from (SFTN branches)

def _reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each family's forward written out module by module, independent of `forward_from`."""
    tiny_imagenet = x.shape[-2] == 64  # CRD's VGG: pool4 for 64x64 inputs (the zoo: layer4 output 8 high)
    model = getattr(model, "full", model)  # a depth-dynamic net's full path is its plain full model
    model = getattr(model, "base", model)  # a fresh `adapted` net: identity 1x1 convs after its base's stages
    if isinstance(model, WideResNet):
        x = model.conv1(x)
    elif not isinstance(model, (VGG, VGGNoBN)):  # VGGs have no stem
        x = model.relu(model.bn1(model.conv1(x)))
    if isinstance(model, ResNet) and model.maxpool is not None:
        x = model.maxpool(x)
    layers = sorted((n for n, _ in model.named_children() if n.startswith("layer")), key=lambda n: int(n[5:]))
    for k, layer in enumerate(layers, start=1):
        x = getattr(model, layer)(x)
        if isinstance(model, VGG) and (k < 4 or k == 4 and tiny_imagenet):
            x = getattr(model, f"pool{k}")(x)
    if isinstance(model, WideResNet):
        x = model.relu(model.bn1(x))
    if isinstance(model, (MobileNetV2, ShuffleNetV2)):
        x = model.relu2(model.bn2(model.conv2(x)))
    if isinstance(model, VGGNoBN):  # NetGraft's VGG: pools inside the stages, FC head (BN1d in the teacher)
        x = model.fc_hidden(torch.flatten(model.avgpool(x), 1))
        return model.fc(x if model.fc_bn is None else model.fc_bn(x))
    return model.fc(torch.flatten(model.avgpool(x), 1))


def _stage_outputs(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """`forward(x)` and, by hooks, {-1: the stem's output, i: the output of `stage_names[i]`}.

    The stem's output is the input of ``layer1``, the first module of stage 0 in every family:
    after the ImageNet max-pool, the image itself for VGG (no stem), and for MobileNetV2 not the
    input of ``stage_names[0]`` (= layer2: its stage 0 is layer1 + layer2).
    """
    seen: dict[int, torch.Tensor] = {}
    prefix = model.stage_names[0].rpartition(".")[0]  # 'full' in a depth-dynamic net
    first = model.get_submodule(f"{prefix}.layer1" if prefix else "layer1")
    handles = [first.register_forward_pre_hook(lambda m, args: seen.update({-1: args[0]}))]
    handles += [model.get_submodule(s).register_forward_hook(lambda m, a, out, i=i: seen.update({i: out}))
                for i, s in enumerate(model.stage_names)]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen


FORWARD_FROM_CASES = [(n, None) for n in NAMES] + [(n, 64) for n in NAMES if n.startswith("vgg")]


@pytest.mark.parametrize(("name", "side"), FORWARD_FROM_CASES)
def test_forward_from_every_stage_equals_forward(name, side):
    """forward_from(i, output of stage_names[i]) == forward(images), bit for bit; -1 from the stem."""
    model = _model(name)
    x = _example(name, batch=1) if side is None else torch.randn(1, 3, side, side)
    logits, seen = _stage_outputs(model, x)
    assert sorted(seen) == list(range(-1, len(model.stage_names)))
    with torch.no_grad():
        assert torch.equal(logits, _reference_logits(model, x))
        assert torch.equal(model.stem(x), seen[-1])
        for i, feature in seen.items():
            assert torch.equal(model.forward_from(i, feature), logits), f"stage {i}"
    if isinstance(model, VGG):  # layer5 runs at 4x4 for 32x32 and (after pool4) 64x64 inputs
        assert seen[4].shape[-1] == 4


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobilenetv2", "shufflenetv1",
                                  "shufflenetv2", "resnet18_imagenet"])
def test_forward_from_gradients_reach_the_input(name):
    model = _model(name)
    _, seen = _stage_outputs(model, _example(name, batch=1))
    for i, feature in seen.items():
        x = feature.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.forward_from(i, x).square().sum(), x)
        assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"stage {i}"


def test_forward_from_rejects_bad_stages():
    for name in ("resnet8", "vgg8", "mobilenetv2"):
        model = _model(name)
        last = len(model.stage_names) - 1
        x = torch.randn(1, 3, 32, 32)
        for stage in (-2, last + 1, 1.0, True, "0", None):
            with pytest.raises(ValueError, match=rf"\[-1, {last}\]"):
                model.forward_from(stage, x)
