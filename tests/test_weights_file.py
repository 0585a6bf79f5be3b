"""Plain weight files as teacher/student checkpoints: torchvision's ResNet layout, wrappers, prefixes, safetensors."""

import pytest
import torch

from kdforge.config import ModelConfig
from kdforge.engine.run import build_zoo_model
from kdforge.errors import CheckpointError, ConfigError
from kdforge.models import build_model


def torchvision_resnet18_keys() -> list[str]:
    """The state-dict keys of torchvision's resnet18, written out from its layout (not from our model)."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight", *(f"bn1.{b}" for b in bn)]
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}"
            keys += [f"{p}.conv1.weight", *(f"{p}.bn1.{b}" for b in bn), f"{p}.conv2.weight", *(f"{p}.bn2.{b}" for b in bn)]
            if stage > 1 and block == 0:
                keys += [f"{p}.downsample.0.weight", *(f"{p}.downsample.1.{b}" for b in bn)]
    return keys + ["fc.weight", "fc.bias"]


@pytest.fixture
def reference():
    torch.manual_seed(0)
    model = build_model("resnet18_imagenet", num_classes=10, in_channels=3).eval()
    for m in model.modules():  # non-trivial BN statistics, so a wrong mapping shows in the logits
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def logits_from(path, which="last"):
    model = build_zoo_model(ModelConfig(model="resnet18_imagenet", checkpoint=str(path), which=which), 10, 3, "teacher")
    torch.manual_seed(1)
    return model.eval()(torch.randn(2, 3, 64, 64))


def test_the_torchvision_layout_is_the_zoo_layout_and_prefixed_or_wrapped_files_give_the_same_logits(tmp_path, reference):
    state = reference.state_dict()
    assert list(state) == torchvision_resnet18_keys()
    torch.manual_seed(1)
    expected = reference(torch.randn(2, 3, 64, 64))
    files = {"plain.pth": state, "ddp.pt": {f"module.{k}": v for k, v in state.items()},
             "wrapped.pt": {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        assert torch.equal(logits_from(tmp_path / name), expected), name


def test_a_safetensors_file_loads_the_same(tmp_path, reference):
    safetensors = pytest.importorskip("safetensors.torch")  # installed by `make setup` (the test extra)
    safetensors.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    expected = reference(torch.randn(2, 3, 64, 64))  # the input logits_from draws
    assert torch.equal(logits_from(tmp_path / "w.safetensors"), expected)


def test_bad_plain_files_fail_in_one_line_naming_the_file_or_key(tmp_path, reference):
    state = reference.state_dict()
    torch.save({k: v for k, v in state.items() if k != "fc.bias"}, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match=r"short\.pt does not fit the resnet18_imagenet built here: fc\.bias is missing"):
        logits_from(tmp_path / "short.pt")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match=r"none\.pt holds no model state dict"):
        logits_from(tmp_path / "none.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors"):
        logits_from(tmp_path / "junk.safetensors")
    torch.save(state, tmp_path / "anon.pt")
    with pytest.raises(ConfigError, match=r"plain state dict, which does not record its model: set teacher\.model"):
        build_zoo_model(ModelConfig(checkpoint=str(tmp_path / "anon.pt")), 10, 3, "teacher")
