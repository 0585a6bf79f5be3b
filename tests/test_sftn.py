"""SFTN: branches for zoo pairs, the loss formula, gradient routing, the saved teacher, the pipeline."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import load_model
from kdforge.errors import ConfigError
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, StepOutputs, build_method
from kdforge.models import build_model

ROOT = Path(__file__).parent.parent
TABLE_PAIRS = [p.stem.split("-") for p in sorted((ROOT / "configs/cifar100/pairs").glob("*.yaml"))]
PAIRS = sorted({tuple(p) for p in TABLE_PAIRS} | {("resnet32x4", "shufflenetv2"), ("vgg13", "mobilenetv2"),
                                                  ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4")})


def bound(trained, params, images, labels=None):
    """An SFTN method bound and set up on `trained` (the teacher-to-be), and its StepOutputs on `images`."""
    method = build_method("sftn", params)
    method.bind(trained, None)
    with FeatureTaps(trained, method.student_layers) as taps:
        trained.eval()
        with torch.no_grad():
            logits, feats = taps(images)
        method.setup(trained, None, StepOutputs(images, labels, logits, student_features=dict(feats)))
        trained.train()
        logits, feats = taps(images)
    return method, StepOutputs(images, labels, logits, student_features=feats, student=trained)


@pytest.mark.parametrize("teacher, student", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_branches_for_every_zoo_pair(teacher, student):
    torch.manual_seed(0)
    trained = build_model(teacher, num_classes=100)
    method, out = bound(trained, {"student": student}, torch.randn(2, 3, 32, 32))
    pairs = min(len(trained.stage_names), len(build_model(student, num_classes=100).stage_names))
    assert len(method.branches) == pairs - 1
    heads = method.eval_heads(out)
    assert list(heads) == [f"branch{i}" for i in range(pairs - 1)]
    for z in heads.values():
        assert z.shape == (2, 100) and torch.isfinite(z).all()


def test_stage_lists_of_different_lengths_pair_from_the_deepest():
    method = build_method("sftn", {"student": "mobilenetv2"})
    method.bind(build_model("vgg13", num_classes=10), None)
    assert method.student_layers == ["layer2", "layer3", "layer4"]  # vgg13 stages 2-4 of 1-5
    assert method.branch_from == [0, 1, 2]  # mobilenetv2 stage_names layer2, layer3, layer5 (of 4)


def direct_loss(z_t, branch_logits, y, lambdas, T, reduction):
    """The formula written out: lambda_T CE(z_T, y) + lambda_KL R_i T^2 KL(p_T || p_i) + lambda_CE R_i CE(z_i, y),
    p = softmax(z / T), R_i the mean or the sum over the branches (kimyuji/SFTN_kd: (kl1 + kl2) / 2, KL times T^2)."""
    n = len(branch_logits) if reduction == "mean" else 1
    p_t = torch.softmax(z_t / T, 1)
    kl = sum((p_t * (torch.log(p_t) - torch.log_softmax(z / T, 1))).sum(1).mean() for z in branch_logits) * T * T / n
    ce = sum(F.cross_entropy(z, y) for z in branch_logits) / n
    return {"teacher_ce": lambdas[0] * F.cross_entropy(z_t, y), "kl": lambdas[1] * kl, "branch_ce": lambdas[2] * ce}


def test_loss_equals_the_formula():
    torch.manual_seed(0)
    trained = build_model("resnet14", num_classes=10)
    y = torch.randint(0, 10, (6,))
    params = {"student": "resnet8", "lambda_t": 0.7, "lambda_kl": 3.0, "lambda_ce": 1.5, "T": 2.0}
    method, out = bound(trained, params, torch.randn(6, 3, 32, 32), y)
    assert len(method.branches) == 2 and method.branch_reduction == "mean"  # the default
    branch_logits = method.branch_logits(out)
    for reduction in ("mean", "sum"):
        method.branch_reduction = reduction
        got = method(out)
        want = direct_loss(out.student_logits, branch_logits, y, (0.7, 3.0, 1.5), 2.0, reduction)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert build_method("sftn", {"student": "resnet8", "branch_reduction": "sum"}).branch_reduction == "sum"


def test_branch_reduction_is_checked():
    with pytest.raises(ConfigError, match="sftn.branch_reduction"):
        build_method("sftn", {"student": "resnet8", "branch_reduction": "avg"})
    from kdforge.methods.sftn import SFTN

    with pytest.raises(ConfigError, match="sftn.branch_reduction"):
        SFTN("resnet8", branch_reduction="avg")


@pytest.mark.parametrize("teacher, student, points", [("resnet14", "resnet8", [0, 1]),
                                                     ("resnet14", "mobilenetv2", [1, 2])])  # paired from the deepest
def test_branch_is_the_students_stages_after_its_point(teacher, student, points):
    """Given the student's weights and its own stage-i feature (no transform), branch i gives the student's logits."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    method, _ = bound(build_model(teacher, num_classes=10), {"student": student}, images)
    reference = build_model(student, num_classes=10).eval()
    names = reference.stage_names
    with torch.no_grad(), FeatureTaps(reference, names) as taps:
        want, feats = taps(images)
    assert method.branch_from == points and len(method.branches) == 2
    for branch, i in zip(method.branches, method.branch_from):
        branch.student.load_state_dict(reference.state_dict())
        branch.transform = torch.nn.Identity()
        branch.eval()
        with torch.no_grad():
            got = branch(feats[names[i]])
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            for name in names[:i + 1]:  # the stages up to the branch point are not run ...
                for p in branch.student.get_submodule(name).parameters():
                    p.add_(1.0)
            assert torch.equal(branch(feats[names[i]]), got)
            for p in branch.student.get_submodule(names[i + 1]).parameters():  # ... the next one is
                p.add_(1.0)
            assert not torch.allclose(branch(feats[names[i]]), got)


def test_transforms_follow_the_public_code():
    """As kimyuji/SFTN_kd's FeatTrans: 1x1 conv at equal size, 3x3/2 conv to halve, 4x4/2 transposed to double."""
    from torch import nn

    from kdforge.methods.adapters import ConvRegressor
    from kdforge.methods.sftn import branch_transform

    x = {side: torch.randn(2, 16, side, side) for side in (4, 8, 12, 16)}
    for (size_in, size_out), kind, kernel in [((8, 8), nn.Conv2d, 1), ((16, 8), nn.Conv2d, 3),
                                              ((4, 8), nn.ConvTranspose2d, 4)]:
        transform = branch_transform(16, 32, (size_in, size_in), (size_out, size_out))
        conv, bn, relu = transform
        assert type(conv) is kind and conv.kernel_size == (kernel, kernel)
        assert conv.stride == ((1, 1) if size_in == size_out else (2, 2)) and conv.bias is None
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 32 and isinstance(relu, nn.ReLU)
        y = transform(x[size_in])
        assert y.shape == (2, 32, size_out, size_out) and (y >= 0).all()
    other = branch_transform(16, 32, (12, 12), (8, 8))  # a ratio that code does not handle
    assert isinstance(other, ConvRegressor) and other(x[12]).shape == (2, 32, 8, 8)
    method, _ = bound(build_model("resnet14", num_classes=10), {"student": "resnet8"}, torch.randn(2, 3, 32, 32))
    assert [b.transform[0].kernel_size for b in method.branches] == [(1, 1), (1, 1)]  # equal sizes at both points


def test_cli_takes_branch_reduction(tmp_path, capsys):
    from kdforge.cli.args import method_overrides
    from kdforge.cli.sftn import _check_before_training

    sftn = method_overrides("sftn", ["branch_reduction=sum"], "--sftn", exclude=("student",))
    assert sftn == {"branch_reduction": "sum"}
    _check_before_training("resnet14", "resnet8", sftn)
    assert build_method("sftn", {"student": "resnet8", **sftn}).branch_reduction == "sum"
    args = ["sftn", "--teacher", "resnet14", "--student", "resnet8", "--methods", "kd", "--seeds", "0",
            "--out", str(tmp_path / "out"), "--no-progress", "--sftn", "branch_reduction=avg"]
    assert main(args) == 2
    assert "branch_reduction" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused before training


def grads_after(trained, method, out, part):
    """Gradients of the trained network's parameters from one loss, on a fresh forward pass."""
    trained.zero_grad()
    method.zero_grad()
    with FeatureTaps(trained, method.student_layers) as taps:
        logits, feats = taps(out.images)
    fresh = StepOutputs(out.images, out.labels, logits, student_features=feats, student=trained)
    method(fresh)[part].backward()
    return {name: p.grad for name, p in trained.named_parameters()}


def test_gradient_routing():
    torch.manual_seed(0)
    images, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    trained = build_model("resnet14", num_classes=10)
    method, out = bound(trained, {"student": "resnet8", "branches": [0]}, images, y)  # one branch, after layer1
    g = grads_after(trained, method, out, "kl")
    assert g["fc.weight"].abs().sum() > 0  # KL reaches the teacher through its logits (not detached) ...
    assert g["layer1.0.conv1.weight"].abs().sum() > 0  # ... and through the branch's transform
    g = grads_after(trained, method, out, "branch_ce")
    assert g["layer1.0.conv1.weight"].abs().sum() > 0
    after = [n for n in g if n.startswith(("layer2", "layer3", "fc"))]
    assert after and all(g[n] is None for n in after)  # never past the branch point

    method, out = bound(trained, {"student": "resnet8", "branches": [1]}, images, y)  # after layer2
    g = grads_after(trained, method, out, "branch_ce")
    assert g["layer2.0.conv1.weight"].abs().sum() > 0 and g["layer1.0.conv1.weight"].abs().sum() > 0
    assert all(g[n] is None for n in g if n.startswith(("layer3", "fc")))

    method, out = bound(trained, {"student": "resnet8", "detach_teacher": True}, images, y)
    g = grads_after(trained, method, out, "kl")
    assert g["fc.weight"] is None  # detached: the KL moves only the branches ...
    assert g["layer1.0.conv1.weight"].abs().sum() > 0  # ... and the blocks before their branch points

    # the public implementation's form: features detached before the branches
    method, out = bound(trained, {"student": "resnet8", "detach_features": True}, images, y)
    g = grads_after(trained, method, out, "branch_ce")
    assert all(g[n] is None for n in g)  # branch CE trains only the branches' transforms and copies
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.branches[0].transform.parameters())
    g = grads_after(trained, method, out, "kl")
    assert g["fc.weight"].abs().sum() > 0  # KL still reaches the teacher, through its logits only
    assert g["layer1.0.conv1.weight"] is not None  # (its whole body lies under z_T) ...
    g_detached = g["layer1.0.conv1.weight"].clone()
    method_j, out_j = bound(trained, {"student": "resnet8"}, images, y)
    method_j.load_state_dict(method.state_dict())  # the same branches, features not detached
    g_joint = grads_after(trained, method_j, out_j, "kl")["layer1.0.conv1.weight"]
    assert not torch.allclose(g_detached, g_joint)  # ... but not through the branches: another gradient
    assert torch.equal(method(out)["kl"], method_j(out_j)["kl"])  # the same forward value


def test_config_errors_and_listing(capsys):
    with pytest.raises(ConfigError, match="student"):
        Losses.from_config({"sftn": 1.0})
    with pytest.raises(ConfigError, match="sftn.branches"):
        method = build_method("sftn", {"student": "resnet8", "branches": [2]})
        method.bind(build_model("resnet20", num_classes=10), None)
    assert main(["methods", "sftn"]) == 0
    text = capsys.readouterr().out
    assert "Park" in text and "lambda_kl" in text and "detach_teacher" in text


COMMON = {"data": {"augment": {"crop_padding": 2, "hflip": False}, "batch_size": 64},
          "schedule": {"name": "cosine", "epochs": 2},
          "train": {"progress": False, "tensorboard": False, "device": "cpu"}}


def test_sftn_run_logs_branches_and_saves_a_plain_teacher(tmp_path):
    from kdforge.data import load_dataset
    from kdforge.engine import Trainer

    cfg = config_from_dict({**COMMON, "name": "sftn", "output_dir": str(tmp_path), "student": {"model": "resnet14"},
                            "losses": {"sftn": {"student": "resnet8"}}})
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    trained = build_model("resnet14", num_classes=10, in_channels=1)
    losses = Losses.from_config(cfg.losses)
    trainer = Trainer(trained, losses, train, test, config=cfg, run_dir=tmp_path / "sftn")
    summary = trainer.fit()
    epochs = [json.loads(line) for line in (tmp_path / "sftn" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        assert {"eval_top1", "eval_top1/sftn/branch0", "eval_top1/sftn/branch1"} <= set(record)
        assert {"train_sftn/teacher_ce", "train_sftn/kl", "train_sftn/branch_ce"} <= set(record)
    # both learn, far above chance (10%): 53% and 39% here (bf16, train.precision auto); the thresholds
    # keep 4x that lead over chance for other CPUs' rounding (bf16 kernels differ, fp32 where no bf16 unit)
    assert summary["top1_last"] > 20 and epochs[-1]["eval_top1/sftn/branch1"] > 17
    plain, ckpt = load_model(tmp_path / "sftn", "last")
    plain.eval()
    assert type(plain) is type(trained) and ckpt["model"]["name"] == "resnet14"
    x = torch.randn(5, 1, 32, 32)
    trained.eval().float().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert torch.equal(plain(x), trained(x))
    # ... and it is the teacher of any method
    kd = config_from_dict({**COMMON, "name": "kd", "output_dir": str(tmp_path), "student": {"model": "resnet8"},
                           "teacher": {"checkpoint": str(tmp_path / "sftn")}, "losses": {"ce": 0.1, "kd": 0.9},
                           "train": {**COMMON["train"], "max_steps": 3}})
    assert train_from_config(kd)["teacher"] == str(tmp_path / "sftn")


def test_pipeline_command_trains_both_teachers_and_reuses_finished_runs(tmp_path, capsys):
    args = ["sftn", "--teacher", "resnet14", "--student", "resnet8", "--methods", "kd", "at", "--seeds", "0",
            "--epochs", "1", "--set", "train.max_steps=4", "--set", "train.device=cpu",
            "--set", "train.tensorboard=false", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    table = capsys.readouterr().out
    for row in ("| standard |", "| SFTN |"):
        assert row in table
    assert "student kd" in table and "student at" in table and "branch 0" in table
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "summary.json").is_file())
    assert runs == ["sftn-at-seed0", "sftn-kd-seed0", "sftn-teacher-seed0",
                    "standard-at-seed0", "standard-kd-seed0", "standard-teacher-seed0"]
    # the report has a row per run: KD from the SFTN teacher and from the standard one stay apart
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(g["label"] for g in report["groups"]) == [name[:-len("-seed0")] for name in runs]
    kd_summary = json.loads((tmp_path / "sftn-kd-seed0" / "summary.json").read_text())
    assert kd_summary["teacher"] == str(tmp_path / "sftn-teacher-seed0")
    stamps = {p: (p / "summary.json").stat().st_mtime_ns for p in tmp_path.iterdir() if p.name in runs}
    assert main(args) == 0  # again: every run is finished, nothing retrains
    assert stamps == {p: (p / "summary.json").stat().st_mtime_ns for p in stamps}
    assert "| SFTN |" in capsys.readouterr().out
    assert main(args + ["--methods", "sftn"]) == 2  # not a distillation method
    assert "does not distil" in capsys.readouterr().err
    assert main(args + ["--epochs", "2"]) == 2  # other settings in the same --out: never silently reused
    assert "another --out" in capsys.readouterr().err
    fresh = [a if a != str(tmp_path) else str(tmp_path / "new") for a in args]
    for extra, message in ((["--sftn", "student=resnet14"], "--student"), (["--sftn", "lambda_kl=abc"], "lambda_kl"),
                           (["--seeds", "0", "0"], "each seed once"), (["--sftn", "branches=[5]"], "sftn.branches")):
        assert main(fresh + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())  # refused before training


def test_evaluation_gives_every_module_its_own_mode_back():
    """Heads are evaluated in eval mode; afterwards a frozen (eval) submodule stays frozen."""
    from kdforge.data import TensorLoader, load_dataset
    from kdforge.engine.evaluate import evaluate
    from kdforge.engine.precision import resolve_precision

    model = build_model("resnet8", num_classes=10, in_channels=1)
    extra = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3))
    extra[1].eval()  # e.g. a method's frozen paraphraser
    seen = []

    def heads(images, labels):
        seen.append((model.training, extra[0].training))
        return model(images), {"same": model(images)}

    data = load_dataset("digits", split="test").subset(torch.arange(40))
    loader = TensorLoader(data, 16, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0)
    metrics = evaluate(model, loader, resolve_precision("fp32", False, torch.device("cpu")), heads=heads,
                       also_eval=[extra])
    assert seen and all(mode == (False, False) for mode in seen)
    assert model.training and extra[0].training and not extra[1].training
    assert metrics["top1/same"] == pytest.approx(metrics["top1"])
