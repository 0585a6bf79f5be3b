"""Depth-level dynamic networks: sub-nets are exact plain architectures, exportable as such."""

import pytest
import torch
import torch.nn.functional as F

from kdforge.errors import ConfigError
from kdforge.models import build_model
from kdforge.models.dynamic import build_ddnn, stage_depths
from kdforge.models.resnet import BasicBlock, ResNet


def randomise_bn(model):
    """Non-trivial BN statistics, so that eval-mode outputs depend on every block."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("full, subnets, size", [
    ("resnet56", ["resnet44", "resnet32", "resnet20"], 32),
    ("resnet34_imagenet", ["resnet18_imagenet"], 64),
])
def test_every_subnet_equals_its_exported_plain_model(full, subnets, size):
    torch.manual_seed(0)
    ddnn = build_ddnn(full, subnets, num_classes=10)
    randomise_bn(ddnn)
    ddnn.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(ddnn(x), ddnn.full(x))  # the full path is the plain full model
        outputs = {}
        for name in subnets:
            plain = build_model(name, num_classes=10).eval()
            plain.load_state_dict(ddnn.subnet_state_dict(name))  # strict: exactly the plain layout
            assert stage_depths(plain) == ddnn.subnets[name]
            outputs[name] = ddnn(x, name)
            assert torch.equal(outputs[name], plain(x)), name
    if len(subnets) > 1:  # different depths really compute different functions
        assert not torch.equal(outputs[subnets[0]], outputs[subnets[-1]])
    assert ddnn.names == [full, *subnets]


def test_custom_depths_and_their_export():
    torch.manual_seed(0)
    ddnn = build_ddnn("resnet56", [[3, 5, 7], "resnet20"], num_classes=10)
    assert ddnn.subnets == {"d3-5-7": (3, 5, 7), "resnet20": (3, 3, 3)}
    randomise_bn(ddnn)
    plain = ResNet(BasicBlock, (3, 5, 7), (16, 32, 64), stem_width=16, num_classes=10).eval()
    plain.load_state_dict(ddnn.subnet_state_dict("d3-5-7"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ddnn.eval()(x, "d3-5-7"), plain(x))


@pytest.mark.parametrize("full, subnets, message", [
    ("resnet56", ["resnet110"], "more blocks"),
    ("resnet56", ["resnet8x4"], "widths differ"),
    ("resnet50_imagenet", ["resnet18_imagenet"], "block type"),
    ("resnet56", ["wrn_16_2"], "cannot be a sub-net"),
    ("resnet56", [[9, 9, 10]], "between 1 and"),
    ("resnet56", [[0, 3, 3]], "between 1 and"),
    ("resnet56", [[3, 3]], "stage depths"),
    ("vgg13", ["vgg8"], "built from ResNets"),
])
def test_impossible_subnets_say_why(full, subnets, message):
    with pytest.raises(ConfigError, match=message):
        build_ddnn(full, subnets, num_classes=10)
    ddnn = build_ddnn("resnet20", ["resnet8"], num_classes=10)
    with pytest.raises(ConfigError, match="holds resnet20, resnet8"):
        ddnn(torch.randn(1, 3, 32, 32), "resnet14")


def test_summed_subnet_losses_give_the_sum_of_separate_gradients():
    torch.manual_seed(0)
    ddnn = build_ddnn("resnet20", ["resnet14", "resnet8"], num_classes=10).eval()  # eval: no BN batch coupling
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    separate = {n: torch.zeros_like(p) for n, p in ddnn.named_parameters()}
    for name in ddnn.names:
        ddnn.zero_grad()
        F.cross_entropy(ddnn(x, name), y).backward()
        for n, p in ddnn.named_parameters():
            if p.grad is not None:
                separate[n] += p.grad
    ddnn.zero_grad()
    sum(F.cross_entropy(ddnn(x, name), y) for name in ddnn.names).backward()
    for n, p in ddnn.named_parameters():
        torch.testing.assert_close(p.grad, separate[n], rtol=1e-5, atol=1e-7)
    # blocks only the full net uses get gradient from the full net alone
    assert ddnn.full.layer3[2].conv1.weight.grad.abs().sum() > 0
