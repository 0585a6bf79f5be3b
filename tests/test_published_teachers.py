"""RepDistiller's / mdistiller's published CIFAR teacher files load unchanged into the zoo (issue 37).

Each of their models is written again in tests/peer_models.py with their parameter names, saved with random
weights as their train_teacher.py saves `ckpt_epoch_240.pth`, and loaded as `teacher.checkpoint` is: the zoo
model's logits must equal theirs exactly. The accuracy such a file states goes beside the measured one
(`kdforge eval`, the run summary), with a warning when they lie more than a point apart.
"""

import pytest
import torch

from kdforge.cli import main
from kdforge.config import ModelConfig, config_from_dict
from kdforge.engine.run import build_zoo_model
from kdforge.errors import CheckpointError
from peer_models import PEERS, build_peer, published_file  # tests/ is on the path

LAYOUT = {"ResNet50": "ResNet50", "ShuffleV1": "ShuffleNet", "ShuffleV2": "ShuffleNet", "MobileNetV2": "MobileNetV2"}


def save(obj, path, legacy: bool):
    """Their 2019 files are in torch's pre-1.6 (non-zip) format; files written since, in the zip format."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def load_teacher(path, model: str, num_classes: int = 100, in_channels: int = 3, sources: dict | None = None):
    """`teacher: {model: MODEL, checkpoint: PATH}` as a run builds it."""
    return build_zoo_model(ModelConfig(model=model, checkpoint=str(path)), num_classes, in_channels, "teacher",
                           sources).eval()


@pytest.mark.parametrize("peer_name", list(PEERS))
def test_a_published_teacher_file_loads_into_the_zoo_model_with_exactly_its_logits(tmp_path, peer_name):
    zoo_name = PEERS[peer_name][0]
    torch.manual_seed(list(PEERS).index(peer_name))
    peer = build_peer(peer_name)
    path = save(published_file(peer, 73.25), tmp_path / "ckpt_epoch_240.pth", legacy=len(peer_name) % 2 == 0)
    sources = {}
    ours = load_teacher(path, zoo_name, sources=sources)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in peer.parameters())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = peer(x), ours(x)
        pooled = peer.pool(peer.last_map)
        peer.fixed_pool = True  # their own fixed-size average pool: the same mean at 32x32, summed in another order
        torch.testing.assert_close(peer.pool(peer.last_map), pooled, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(want).all() and want.std() > 0
    assert torch.equal(got, want)
    family = LAYOUT.get(peer_name) or {"wrn": "WRN", "vgg": "VGG"}.get(zoo_name[:3])
    assert sources["teacher"]["layout"] == (f"RepDistiller/mdistiller {family}" if family else "as saved")
    assert sources["teacher"]["stated_accuracy"] == 73.25 and sources["teacher"]["file"] == str(path)


def test_a_file_of_another_model_or_layout_fails_in_one_line_naming_the_file_and_the_key(tmp_path):
    torch.manual_seed(0)
    wrn = save(published_file(build_peer("wrn_16_2"), 70.0), tmp_path / "wrn.pth", legacy=True)
    with pytest.raises(CheckpointError) as err:
        load_teacher(wrn, "resnet20")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{wrn} does not fit the resnet20 built here: ")
    assert "its key block1.layer.0.conv1.weight (read as layer1.0.conv1.weight) is (32, 16, 3, 3) in the file, " \
           "(16, 16, 3, 3) in the model" in msg and "layouts tried: as saved, RepDistiller/mdistiller WRN" in msg

    vgg13 = save(published_file(build_peer("vgg13"), 70.0), tmp_path / "vgg13.pth", legacy=False)
    with pytest.raises(CheckpointError, match=r"vgg13\.pth does not fit the vgg8 built here: its key block0\.3\.weight "
                                              r"\(read as layer1\.1\.conv\.weight\) has no place in the model"):
        load_teacher(vgg13, "vgg8")

    state = {k.replace("conv1.", "stem.conv.", 1) if k.startswith("conv1.") else k: v
             for k, v in build_peer("resnet8").state_dict().items()}
    other = save({"model": state, "accuracy": 60.0}, tmp_path / "other.pth", legacy=False)
    with pytest.raises(CheckpointError) as err:
        load_teacher(other, "resnet8")
    assert str(err.value).startswith(f"{other} does not fit the resnet8 built here: its key stem.conv.weight has no "
                                     f"place in the model (and 1 more); layouts tried: as saved;")


def test_a_file_without_bn_batch_counts_loads_too(tmp_path):
    """Files from before PyTorch 0.4.1 have no `num_batches_tracked`; eval-mode logits do not use it."""
    torch.manual_seed(0)
    peer = build_peer("wrn_16_1")
    state = {k: v for k, v in peer.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = load_teacher(save({"model": state}, tmp_path / "old.pth", legacy=True), "wrn_16_1")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), peer(x))


@pytest.mark.parametrize("legacy", [True, False])
def test_a_truncated_file_fails_in_one_line_naming_the_file(tmp_path, legacy):
    torch.manual_seed(0)
    whole = save(published_file(build_peer("resnet8"), 70.0), tmp_path / "whole.pth", legacy)
    cut = tmp_path / "ckpt_epoch_240.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_teacher(cut, "resnet8")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"checkpoint {cut} cannot be read")


def digits_teacher(tmp_path, stated: float):
    """A resnet8 in their layout for the digits data (10 classes, 1 channel), stating `stated` % top-1."""
    torch.manual_seed(3)
    return save(published_file(build_peer("resnet8", num_classes=10, in_channels=1), stated),
                tmp_path / f"stated{stated}.pth", legacy=True)


def test_eval_shows_the_stated_accuracy_beside_the_measured_one_and_warns_when_it_is_off(tmp_path, capsys):
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

    path = digits_teacher(tmp_path, 97.5)
    metrics = evaluate_checkpoint(path, model_name="resnet8", data="digits", device="cpu")
    assert metrics["stated_top1"] == 97.5 and metrics["model"] == "resnet8" and metrics["n"] == 360
    assert main(["eval", str(path), "--model", "resnet8", "--data", "digits", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert f"top-1 {metrics['top1']:.2f}% (the file states 97.50%)" in out
    assert err.count("\n") == 1 and err.startswith(f"warning: {path} states top-1 97.50% but measures "
                                                   f"{metrics['top1']:.2f}% on digits/test, more than 1 point apart")
    near = digits_teacher(tmp_path, round(metrics["top1"] + 0.75, 2))  # the same weights (seed 3), within a point
    assert main(["eval", str(near), "--model", "resnet8", "--data", "digits", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "the file states" in out and err == ""
    assert main(["eval", str(near), "--data", "digits"]) == 2  # a plain file does not name its model
    assert "is not a kdforge checkpoint" in capsys.readouterr().err


def test_a_run_records_the_stated_and_measured_accuracy_of_its_teacher_and_warns_once(tmp_path, capsys):
    from kdforge.engine import train_from_config

    path = digits_teacher(tmp_path, 97.5)
    summary = train_from_config(config_from_dict({
        "name": "kd-from-published", "output_dir": str(tmp_path),
        "teacher": {"model": "resnet8", "checkpoint": str(path)}, "student": {"model": "resnet8"},
        "losses": {"ce": 1, "kd": 1}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "max_steps": 1}}))
    source = summary["teacher_checkpoint"]
    assert source["stated_accuracy"] == 97.5 and source["layout"] == "as saved"
    assert source["measured_on"] == "digits/test" and 0 <= source["measured_top1"] <= 100
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {path} states top-1 97.50% but measures {source['measured_top1']:.2f}% on "
                        f"digits/test, more than 1 point apart: another data set or split, input normalisation, "
                        f"or model?"]
