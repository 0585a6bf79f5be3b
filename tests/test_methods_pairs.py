"""Default layers work for every teacher/student pair of the CIFAR-100 table, for every method."""

from pathlib import Path

import pytest
import torch

from kdforge.features import FeatureTaps
from kdforge.methods import LossComposer, StepOutputs, method_class, method_names
from kdforge.models import build_model

PAIRS = [p.stem.split("-") for p in sorted((Path(__file__).parent.parent / "configs/cifar100/pairs").glob("*.yaml"))]
METHODS = [m for m in method_names() if method_class(m).needs_teacher]


@pytest.mark.parametrize("teacher_name, student_name", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_every_method_binds_and_steps_on_the_pair(teacher_name, student_name):
    torch.manual_seed(0)
    teacher = build_model(teacher_name, num_classes=100).eval().requires_grad_(False)
    student = build_model(student_name, num_classes=100)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    for name in METHODS:
        losses = LossComposer.from_config({name: 1.0})
        losses.bind(student, teacher)
        with FeatureTaps(teacher, losses.teacher_taps) as t_taps, FeatureTaps(student, losses.student_taps) as s_taps:
            with torch.no_grad():
                t_logits, t_feats = t_taps(images)
            student.eval()
            with torch.no_grad():
                s_logits, s_feats = s_taps(images)
            example = StepOutputs(images, labels, s_logits, t_logits, dict(s_feats), dict(t_feats), student,
                                  teacher, indices=torch.arange(4), num_train_samples=64)
            losses.setup(student, teacher, example)
            student.train()
            s_logits, s_feats = s_taps(images)
            out = StepOutputs(images, labels, s_logits, t_logits, s_feats, t_feats, student, teacher,
                              indices=torch.arange(4), num_train_samples=64)
            total = sum(losses(out).values())
        assert torch.isfinite(total), (name, teacher_name, student_name)
        student.zero_grad()
        total.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), (name, teacher_name, student_name)
