"""`kdforge eval --teacher`: a student's fidelity to its teacher (top-1 agreement, KL(teacher || student), the
teacher's top-1), checked against a direct computation on the same images, and the invariance of a model against
itself."""

import json

import pytest
import torch
import torch.nn.functional as F

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.data import load_dataset
from kdforge.data.batches import make_loader
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import load_model
from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

TRAIN = {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu"}


def run(root, name, model, losses, teacher=None, steps=None, epochs=1):
    config = {"name": name, "output_dir": str(root), "student": {"model": model}, "losses": losses,
              "data": {"batch_size": 64}, "optim": {"lr": 0.1}, "schedule": {"name": "cosine", "epochs": epochs},
              "train": {**TRAIN, "max_steps": steps}}
    if teacher is not None:
        config["teacher"] = {"checkpoint": str(teacher)}
    train_from_config(config_from_dict(config))
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    teacher = run(root, "teacher", "resnet8", {"ce": 1.0}, epochs=2)  # well above chance (about 28 %)
    student = run(root, "student", "resnet8", {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}, teacher, steps=12)
    alone = run(root, "alone", "resnet8", {"ce": 1.0}, steps=6)
    return teacher, student, alone


def direct(student_run, teacher_run):
    """Agreement, KL and the teacher's top-1 on the digits test split, written out here with both models'
    logits over the whole split in batches of 256 (as `kdforge eval`'s default)."""
    student, _ = load_model(student_run)
    teacher, _ = load_model(teacher_run)
    student.eval(), teacher.eval()
    loader = make_loader(load_dataset("digits", None, "test"), 256, shuffle=False, drop_last=False,
                         device=torch.device("cpu"), seed=0, workers=0)  # the images as the models see them
    s, t, y = [], [], []
    with torch.no_grad():
        for x, labels in loader:
            s.append(student(x)), t.append(teacher(x)), y.append(labels)
    s, t, labels = torch.cat(s), torch.cat(t), torch.cat(y)
    p_t = F.softmax(t, 1)
    kl = (p_t * (F.log_softmax(t, 1) - F.log_softmax(s, 1))).sum(1).mean().item()
    return (100.0 * (s.argmax(1) == t.argmax(1)).float().mean().item(), kl,
            100.0 * (t.argmax(1) == labels).float().mean().item(), len(labels))


def test_fidelity_to_the_runs_own_teacher_is_the_direct_computation(runs):
    teacher, student, _ = runs
    metrics = evaluate_checkpoint(student, teacher="")
    agreement, kl, teacher_top1, n = direct(student, teacher)
    got = metrics["teacher"]
    assert got["n"] == n and got["checkpoint"].startswith(str(teacher))
    assert got["agreement"] == pytest.approx(agreement, abs=100.0 / n)  # one image, at most, for a near-tie
    assert got["kl"] == pytest.approx(kl, rel=1e-4)
    assert got["teacher_top1"] == pytest.approx(teacher_top1, abs=100.0 / n)
    assert 0 < got["kl"] and 0 < got["agreement"] < 100  # a few steps: the student is not its teacher yet
    assert got["teacher_top1"] > 15  # chance is 10 %: the teacher's outputs are not one constant class


def test_a_model_against_itself_agrees_everywhere_with_zero_kl(runs):
    teacher, _, _ = runs
    metrics = evaluate_checkpoint(teacher, teacher=str(teacher))
    assert metrics["teacher"]["agreement"] == 100.0
    assert metrics["teacher"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["teacher"]["teacher_top1"] == metrics["top1"]


def test_cli_prints_fidelity_and_json(runs, capsys):
    teacher, student, alone = runs
    assert main(["eval", str(student), "--teacher"]) == 0
    out = capsys.readouterr().out
    assert "against its teacher: agreement" in out and "KL(teacher || student)" in out
    assert main(["eval", str(alone), "--teacher", str(teacher), "--json"]) == 0  # any teacher, named
    data = json.loads(capsys.readouterr().out)
    assert set(data["teacher"]) == {"checkpoint", "agreement", "kl", "teacher_top1", "n"}


def test_without_a_teacher_to_compare_with_it_is_one_line(runs, capsys):
    _, _, alone = runs
    assert main(["eval", str(alone), "--teacher"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trained without a teacher" in err and "--teacher RUN_OR_CHECKPOINT" in err


def test_an_exported_file_with_teacher_is_refused_in_one_line(runs, tmp_path, capsys):
    from kdforge.deploy.export import export_model

    _, student, _ = runs
    exported = export_model(student, format="torchscript", out=tmp_path / "student.ts")["path"]
    assert main(["eval", str(exported), "--teacher"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the exported file" in err
