"""Quantisation-aware training (`train.quantize`) and the int8 export of its student.

Tolerances. The fake-quantised student simulates PyTorch's int8 model: the same scales and zero points, weights
on the same int8 grid, so they agree but for rounding order (float vs integer accumulation), a few output steps
at most. The QDQ ONNX file of a qnnpack-quantised student does ONNX Runtime's integer arithmetic on the same
int8 values: equal to PyTorch's int8 model but for requantisation rounding (a step here and there; bit-equal
with 2 threads on AMD EPYC, 2 output steps with 1 thread; the bound is 3). x86's kernels use 7-bit activations (a value beyond the observed range saturates at 127), which QDQ's
uint8 cannot express: the file keeps such a value, and those differences add up over the layers (8 output
steps seen on a barely trained student; the bound is twice that).
"""

import copy
import json

import pytest
import torch
from torch import nn

from kdforge.config import config_from_dict
from kdforge.deploy.int8 import training_images
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import load_model
from kdforge.engine.quantize import convert, prepare_qat, set_observers, with_tap_points
from kdforge.errors import ConfigError
from kdforge.features import FeatureTaps

pytest.importorskip("onnxruntime")


def config(root, name, *, losses=None, quantize=None, epochs=3, teacher=None, **train):
    return config_from_dict({
        "name": name, "output_dir": str(root), "seed": 1,
        "data": {"batch_size": 64, "few_shot": {"shots": 30, "seed": 0, "labels": True}},
        "student": {"model": "resnet8"}, "losses": losses or {"ce": 1.0},
        "teacher": teacher, "schedule": {"name": "cosine", "epochs": epochs},
        "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32",
                  "quantize": quantize, **train}})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    cfg = config(root, "t", epochs=2)
    cfg.student.model = "resnet14"
    train_from_config(cfg)
    return {"checkpoint": str(root / "t")}


def epochs_of(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "epoch"]


def weights(run_dir):
    return load_model(run_dir)[0].state_dict()


def test_fake_quantisation_starts_at_its_epoch_and_not_before(tmp_path):
    plain = train_from_config(config(tmp_path, "plain", epochs=3), until_epoch=1)
    qat = train_from_config(config(tmp_path, "qat", epochs=3, quantize={"start_epoch": 1}), until_epoch=1)
    assert qat["top1_last"] == plain["top1_last"]
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "qat")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # epoch 0: plain float training
    train_from_config(config(tmp_path, "qat", epochs=3, quantize={"start_epoch": 1}), resume=True)
    assert [r["fake_quant"] for r in epochs_of(tmp_path / "qat")] == [0, 1, 1]
    student, ckpt = load_model(tmp_path / "qat")
    assert ckpt["quantize"] == {"mode": "qat", "backend": "x86"}
    fake = [m for m in student.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]
    assert fake and all(bool(m.fake_quant_enabled) for m in fake)
    # active: what the next layer reads from layer1 lies on the int8 grid of its fake quantiser
    with_tap_points(student, ["layer1"])
    point = next(n for n in student.graph.nodes if n.target == student.kdforge_tap_points["layer1"])
    quantiser = student.get_submodule(point.args[0].target)
    x = training_images(ckpt["config"], ckpt["data"], 64)
    student.eval()
    with FeatureTaps(student, ["layer1"]) as taps, torch.no_grad():
        simulated, feats = taps(x)
    levels = feats["layer1"] / quantiser.scale + quantiser.zero_point
    assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.round().unique().numel() > 10
    unquantised = copy.deepcopy(student).apply(torch.ao.quantization.disable_fake_quant)
    with torch.no_grad():
        assert not torch.allclose(unquantised(x), simulated, atol=1e-4)  # and it changes what the student says
    with pytest.raises(ConfigError, match="holds a student trained with fake int8 quantisation"):
        train_from_config(config(tmp_path, "from-qat", losses={"ce": 1.0, "kd": 1.0},
                                 teacher={"checkpoint": str(tmp_path / "qat")}, epochs=1))


def test_resume_in_the_quantised_phase_is_exact(tmp_path, teacher):
    losses = {"ce": 1.0, "kd": {"weight": 1.0, "T": 4.0}}
    q = {"start_epoch": 1}
    whole = train_from_config(config(tmp_path, "whole", losses=losses, quantize=q, teacher=teacher))
    train_from_config(config(tmp_path, "cut", losses=losses, quantize=q, teacher=teacher), until_epoch=2)
    cut = train_from_config(config(tmp_path, "cut", losses=losses, quantize=q, teacher=teacher), resume=True)
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # observers' ranges included
    assert cut["top1_last"] == whole["top1_last"]
    assert any(k.endswith("activation_post_process_0.scale") for k in a)


def test_feature_taps_follow_the_traced_student(digits_head):
    """A tap point gives what the float model's module gives when fake quantisation is off (BN folded)."""
    from kdforge.engine.run import build_zoo_model

    torch.manual_seed(0)
    model = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    x = torch.randn(16, 1, 8, 8)
    model.train()
    model(x)  # BN statistics away from their initial values
    model.eval()
    with FeatureTaps(model, ["layer1", "layer3:input"]) as taps, torch.no_grad():
        logits, want = taps(x)
        want = {k: v.clone() for k, v in want.items()}
    prepared = with_tap_points(prepare_qat(model, "x86", x), ["layer1", "layer3:input"])
    prepared.eval()
    prepared.apply(torch.ao.quantization.disable_fake_quant)
    set_observers(prepared, False)
    with FeatureTaps(prepared, ["layer1", "layer3:input"]) as taps, torch.no_grad():
        got_logits, got = taps(x)
    assert torch.allclose(got_logits, logits, atol=1e-4)
    for key in want:
        assert got[key].shape == want[key].shape and torch.allclose(got[key], want[key], atol=1e-4)


def test_feature_methods_train_under_qat(tmp_path, teacher):
    summary = train_from_config(config(tmp_path, "at", losses={"ce": 1.0, "at": 1000.0, "fitnet": 1.0},
                                       quantize={"start_epoch": 1}, epochs=2, teacher=teacher, precision="auto"))
    assert summary["precision"] == "fp32"  # auto: fake quantisation trains in fp32 on any CPU
    last = epochs_of(tmp_path / "at")[-1]
    assert last["fake_quant"] == 1 and last["train_at"] > 0 and last["train_fitnet"] > 0
    assert summary["top1_last"] > 0


@pytest.mark.parametrize("backend, steps, agreement", [("qnnpack", 3, 0.95), ("x86", 16, 0.85)])
def test_int8_onnx_agrees_with_pytorchs_int8_model(tmp_path, capsys, backend, steps, agreement):
    import onnxruntime

    from kdforge.deploy.export import export_model

    train_from_config(config(tmp_path, "s", quantize={"start_epoch": 1, "backend": backend}, epochs=2))
    result = export_model(tmp_path / "s", format="onnx", int8=True)
    meta = json.loads(open(result["metadata"]).read())
    assert meta["int8"]["backend"] == backend and meta["int8"]["check"]["split"] == "train"
    student, ckpt = load_model(tmp_path / "s")
    int8 = convert(student.eval())
    x = training_images(ckpt["config"], ckpt["data"], 128, skip=300)
    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        want = int8(x)
    assert (got - want).abs().max() <= steps * float(int8.fc.scale) + 1e-6
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= agreement
    ops = {node.op_type for node in __import__("onnx").load(result["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    if backend == "qnnpack":  # the command: no fp32 model to put beside a QAT student's int8 file
        from kdforge.cli import main

        assert main(["export", str(tmp_path / "s"), "--format", "onnx", "--int8"]) == 0
        text = capsys.readouterr().out
        assert "agrees with PyTorch's int8 model" in text and "| int8:" in text and "| fp32:" not in text


def test_bad_quantize_settings_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="start_epoch=3: the run trains 3 epochs"):
        train_from_config(config(tmp_path, "late", quantize={"start_epoch": 3}))
    with pytest.raises(ConfigError, match="not with train.precision.*bf16"):
        train_from_config(config(tmp_path, "bf16", quantize={"start_epoch": 0}, precision="bf16"))
    cfg = config(tmp_path, "vgg", quantize={"start_epoch": 0})
    cfg.student.model = "vgg8"
    with pytest.raises(ConfigError, match="student vgg8 cannot be prepared"):
        train_from_config(cfg)


def test_an_op_without_an_int8_kernel_is_named():
    from kdforge.deploy.qat_onnx import check_int8_graph

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.act = nn.GELU()
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    x = torch.randn(2, 1, 8, 8)
    prepared = prepare_qat(Net(), "x86", x)
    prepared(x)
    with pytest.raises(ConfigError, match=r"act \(GELU\) has no int8 op"):
        check_int8_graph(convert(prepared))
