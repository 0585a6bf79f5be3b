import pytest
import torch
from torch import nn

from kdforge.errors import LayerError
from kdforge.features import FeatureTaps, expand_patterns, layer_shapes


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = self.conv(x)
        x = self.act(self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def manual_forward(model, x):
    a = model.conv(x)
    b = model.block(a)
    c = model.act(b)
    emb = torch.flatten(model.pool(c), 1)
    return a, b, c, emb, model.fc(emb)


def test_taps_equal_manual_forward():
    model = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    a, b, c, emb, logits = manual_forward(model, x)
    with FeatureTaps(model, ["conv", "block", "act:output", "act:input", "fc:input"]) as taps:
        out, feats = taps(x)
    assert torch.equal(out, logits)
    assert torch.equal(feats["conv"], a)
    assert torch.equal(feats["block"], b)
    assert torch.equal(feats["act"], c)
    assert torch.equal(feats["act:input"], b)  # the pre-activation
    assert torch.equal(feats["fc:input"], emb)


def test_hooks_removed_on_exit():
    model = Tiny()
    with FeatureTaps(model, ["conv"]):
        assert len(model.conv._forward_hooks) == 1
    assert len(model.conv._forward_hooks) == 0


def test_unknown_name_lists_close_matches():
    with pytest.raises(LayerError) as info:
        FeatureTaps(Tiny(), ["blok"])
    assert "block" in str(info.value) and "kdforge layers" in str(info.value)


def test_gradients_flow_through_tapped_features():
    model = Tiny()
    with FeatureTaps(model, ["block"]) as taps:
        _, feats = taps(torch.randn(2, 3, 8, 8))
        feats["block"].pow(2).mean().backward()
    assert model.conv.weight.grad is not None and model.fc.weight.grad is None


def test_glob_expansion_and_layer_shapes():
    model = Tiny()
    assert expand_patterns(model, ["block.*"]) == ["block.0", "block.1"]
    assert expand_patterns(model, ["c*:input"]) == ["conv:input"]
    rows = {name: shape for name, _, shape in layer_shapes(model, torch.zeros(1, 3, 8, 8))}
    assert rows["conv"] == (4, 8, 8) and rows["fc"] == (5,) and rows["pool"] == (4, 1, 1)
