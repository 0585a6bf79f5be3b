"""Default layers work for every teacher/student pair of the CIFAR-100 table, for every method."""

from pathlib import Path

import pytest
import torch

from kdforge.data.augment import PixelNormalization
from kdforge.errors import ConfigError, LayerError
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, StepOutputs, method_class, method_names
from kdforge.models import build_model

PAIRS = [p.stem.split("-") for p in sorted((Path(__file__).parent.parent / "configs/cifar100/pairs").glob("*.yaml"))]
UNIT = PixelNormalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # CIFAR-like images for MLKD's strong view
METHODS = [m for m in method_names() if method_class(m).needs_teacher]
#: methods that need the same channels at each tap in both models, and the pairs of the table where they have them
#: (the same family and widths: RepDistiller's FSP rows); on the other pairs they must refuse before training
SAME_FAMILY_AND_WIDTHS = {"resnet110-resnet32", "resnet32x4-resnet8x4", "resnet56-resnet20", "vgg13-vgg8",
                          "wrn_40_2-wrn_16_2"}
SAME_CHANNELS = {"fsp": SAME_FAMILY_AND_WIDTHS, "kdsvd": SAME_FAMILY_AND_WIDTHS}


@pytest.mark.parametrize("teacher_name, student_name", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_every_method_binds_and_steps_on_the_pair(teacher_name, student_name):
    torch.manual_seed(0)
    teacher = build_model(teacher_name, num_classes=100).eval().requires_grad_(False)
    student = build_model(student_name, num_classes=100)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    for name in METHODS:
        losses = Losses.from_config({name: 1.0})
        net = losses.wrap_student(student, teacher)  # the student itself but for SimKD's network
        if method_class(name).student_requirement:  # DeiT's: a transformer with a distillation token (test_vit.py)
            with pytest.raises(ConfigError, match="distillation token"):
                losses.bind(net, teacher)
            continue
        losses.bind(net, teacher)
        if name in SAME_CHANNELS and f"{teacher_name}-{student_name}" not in SAME_CHANNELS[name]:
            with pytest.raises(LayerError, match="same channels"):
                setup_and_step(losses, net, teacher, images, labels)
            continue
        total = setup_and_step(losses, net, teacher, images, labels)
        assert torch.isfinite(total), (name, teacher_name, student_name)
        net.zero_grad()
        total.backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), (name, teacher_name, student_name)


def setup_and_step(losses, student, teacher, images, labels):
    """The dry run (setup from eval-mode outputs), then one training-mode step; returns the summed loss."""
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
        views = losses.extra_views(images, UNIT)  # SSKD's rotated copies: forwarded with the batch, as the trainer does
        batch = torch.cat([images, *views.values()])
        with torch.no_grad():
            t_logits, t_feats = t_taps(batch)
        s_logits, s_feats = s_taps(batch)

        def part(start, end, labels_):
            return StepOutputs(batch[start:end], labels_, s_logits[start:end], t_logits[start:end],
                               {k: v[start:end] for k, v in s_feats.items()},
                               {k: v[start:end] for k, v in t_feats.items()}, student, teacher,
                               indices=torch.arange(4) if labels_ is not None else None, num_train_samples=64)

        out, start = part(0, 4, labels), 4
        for key, extra in views.items():
            out.views[key] = part(start, start + len(extra), None)
            start += len(extra)
        return sum(losses(out).values())
