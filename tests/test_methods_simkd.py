"""SimKD (Chen et al., CVPR 2022): the student network (its stages, a projector, the teacher's frozen head),
its L2 term against a direct computation, its gradients, and a run that trains, resumes and exports it."""

import torch
import torch.nn.functional as F
import pytest

from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import load_checkpoint, load_model
from kdforge.deploy.export import export_model
from kdforge.errors import ConfigError, LayerError
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, StepOutputs
from kdforge.models import build_model
from kdforge.models.simkd import SimKDNet


def last_map(model, x):
    """The output of the model's last stage on `x`, by a hook on the original model."""
    with FeatureTaps(model, [model.stage_names[-1]]) as taps:
        _, feats = taps(x)
    return feats[model.stage_names[-1]]


def bn_relu(x, bn):
    """An eval-mode BatchNorm2d then ReLU, from the formula."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return torch.relu((x - bn.running_mean[None, :, None, None]) * scale[None, :, None, None]
                      + bn.bias[None, :, None, None])


def projector_by_hand(net, x):
    """1x1 conv -> BN-ReLU -> 3x3 conv -> BN-ReLU -> 1x1 conv -> BN-ReLU, eval mode, with the net's weights."""
    c1, b1, _, c2, b2, _, c3, b3, _ = net.projector
    x = bn_relu(F.conv2d(x, c1.weight), b1)
    x = bn_relu(F.conv2d(x, c2.weight, padding=1), b2)
    return bn_relu(F.conv2d(x, c3.weight), b3)


def wrapped(teacher_name, student_name, **kw):
    teacher = build_model(teacher_name, num_classes=10).eval().requires_grad_(False)
    student = build_model(student_name, num_classes=10)
    losses = Losses.from_config({"simkd": {"weight": 1.0, **kw}})
    net = losses.wrap_student(student, teacher)
    losses.bind(net, teacher)
    return losses, net, student, teacher


@pytest.mark.parametrize("teacher_name, student_name, pool", [
    ("wrn_16_2", "resnet8", "none"),          # 128 vs 64 channels, both 8x8
    ("shufflenetv1", "resnet8", "student"),   # the teacher's map is 4x4: the student's is pooled before P
    ("wrn_16_2", "shufflenetv1", "teacher"),  # the student's map is 4x4: the teacher's is pooled in the loss
])
def test_simkd_network_and_loss_match_the_formula(teacher_name, student_name, pool):
    losses, net, student, teacher = wrapped(teacher_name, student_name)
    net.eval(), student.eval()
    x = torch.randn(3, 3, 32, 32)
    f_s, f_t = last_map(student, x), last_map(teacher, x)
    if pool == "student":
        f_s = F.avg_pool2d(f_s, 2)
    projected = projector_by_hand(net, f_s)
    # the student network classifies with the teacher's own head
    assert torch.allclose(net(x), teacher.head(projected), atol=1e-5)
    target = F.avg_pool2d(f_t, 2) if pool == "teacher" else f_t
    with FeatureTaps(net, losses.student_taps) as ts:
        logits, s_feats = ts(x)
    out = StepOutputs(x, None, logits, teacher(x), dict(s_feats), {teacher.stage_names[-1]: f_t})
    want = ((projected - target) ** 2).sum() / projected.numel()
    assert torch.allclose(losses(out)["simkd"], want, rtol=1e-4)


def test_aligned_features_give_the_teachers_logits_exactly():
    """The paper's premise: a student map equal to the teacher's gives the teacher's prediction, bit for bit,
    also while the network trains (its head keeps the teacher's BN statistics)."""
    _, net, _, teacher = wrapped("wrn_16_2", "resnet8")
    for p in teacher.parameters():
        p.data.normal_()  # distinct BN statistics and weights, so a head from elsewhere would differ
    for m in teacher.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    net = Losses.from_config({"simkd": 1.0}).wrap_student(build_model("resnet8", num_classes=10), teacher)
    net.train()
    f_t = last_map(teacher, torch.randn(4, 3, 32, 32))
    assert torch.equal(net.teacher_head.head(f_t), teacher.head(f_t))
    assert not net.teacher_head.training


def test_only_the_encoder_and_projector_train_and_the_head_holds_only_the_head():
    losses, net, student, teacher = wrapped("wrn_16_2", "resnet8")
    assert set(net.teacher_head.state_dict()) == {k for k in teacher.state_dict() if k.split(".")[0] in ("bn1", "fc")}
    assert not any(k.startswith("base.fc") for k in net.state_dict())  # the student's own classifier is gone
    x = torch.randn(4, 3, 32, 32)
    with FeatureTaps(net, losses.student_taps) as ts, FeatureTaps(teacher, losses.teacher_taps) as tt:
        s_logits, s_feats = ts(x)
        t_logits, t_feats = tt(x)
    losses(StepOutputs(x, None, s_logits, t_logits, dict(s_feats), dict(t_feats)))["simkd"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in net.teacher_head.parameters())
    for part in (net.projector, net.base.layer1):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.dim() > 1)
    assert all(p.grad is None for p in student.parameters())  # the network holds a copy: the student is untouched


def test_bad_inputs_are_refused():
    with pytest.raises(ConfigError, match="losses.simkd: factor: a positive integer"):
        Losses.from_config({"simkd": {"factor": 0}})
    with pytest.raises(ConfigError, match="losses.simkd.factor: 3 does not divide"):
        Losses.from_config({"simkd": {"factor": 3}}).wrap_student(build_model("resnet8", num_classes=10),
                                                                        build_model("wrn_16_2", num_classes=10))
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        Losses.from_config({"simkd": 1.0}).wrap_student(build_model("resnet8", num_classes=10), None)
    losses = Losses.from_config({"simkd": 1.0})
    with pytest.raises(LayerError, match="SimKD network"):
        losses.bind(build_model("resnet8", num_classes=10), build_model("wrn_16_2", num_classes=10))


def run_cfg(tmp_path, name, teacher_dir, epochs=2, **over):
    """A short SimKD run (resnet8 from wrn_16_2, the term alone as the authors train it)."""
    return config_from_dict({
        "name": name, "seed": 3, "output_dir": str(tmp_path), "student": {"model": "resnet8"},
        "teacher": {"checkpoint": str(teacher_dir)}, "losses": {"simkd": 1.0}, **over,
        "data": {"batch_size": 64}, "schedule": {"name": "cosine", "epochs": epochs},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu"}})


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("simkd_teacher")
    train_from_config(config_from_dict({
        "name": "teacher", "seed": 0, "output_dir": str(out), "student": {"model": "wrn_16_2"}, "losses": {"ce": 1.0},
        "data": {"batch_size": 64}, "schedule": {"name": "cosine", "epochs": 1},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu"}}))
    return out / "teacher"


def test_a_simkd_run_trains_resumes_exactly_and_exports_the_network_with_the_teachers_head(tmp_path, teacher_dir):
    # that SimKD teaches the classes (without labels) is test_methods_train.py's; here: resume and export
    train_from_config(run_cfg(tmp_path, "whole", teacher_dir))
    train_from_config(run_cfg(tmp_path, "split", teacher_dir), until_epoch=1)
    train_from_config(run_cfg(tmp_path, "split", teacher_dir), resume=True)
    a, b = (load_checkpoint(tmp_path / n)["student"] for n in ("whole", "split"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    teacher_state = load_checkpoint(teacher_dir)["student"]
    for key, value in load_checkpoint(tmp_path / "whole")["student"].items():
        if key.startswith("teacher_head."):  # frozen through training: the teacher's tensors exactly
            assert torch.equal(value, teacher_state[key.removeprefix("teacher_head.")]), key

    net, ckpt = load_model(tmp_path / "whole")
    assert isinstance(net, SimKDNet) and ckpt["model"]["options"]["teacher"] == "wrn_16_2"
    done = export_model(tmp_path / "whole")
    exported, _ = load_model(done["path"])
    x = torch.randn(5, 1, 8, 8)
    net.eval(), exported.eval()
    assert torch.equal(net(x), exported(x))
    assert done["params"] == sum(p.numel() for p in net.parameters())
