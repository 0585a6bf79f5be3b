"""Park, Cha, Jeong, Kim & Han, "Learning Student-Friendly Teacher Networks for Knowledge
Distillation", NeurIPS 2021 (arXiv:2102.07650)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import ConfigError, LayerError
from kdforge.methods.adapters import ConvRegressor
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.kd import kd_loss
from kdforge.methods.registry import register_method
from kdforge.models.capabilities import StagedNet


def branch_transform(in_channels: int, out_channels: int, in_size: tuple[int, int],
                     out_size: tuple[int, int]) -> nn.Module:
    """Transform T_i: the trained network's stage-i map -> the student's stage-i shape, conv + BN + ReLU.

    As the public re-implementation (kimyuji/SFTN_kd, ``models/util.py: FeatTrans``) builds it:
    1x1 conv at equal spatial size; 3x3 conv, stride 2, padding 1 when the teacher's map is
    twice the student's; 4x4 transposed conv, stride 2, padding 1 when it is half. BN over the
    student's channels (that code sizes it by the teacher's, which only runs when the channel
    counts agree). The conv has no bias (BN cancels it). *Interpretation* for any other size
    ratio, which that code does not handle: FitNet's `ConvRegressor` (resampling + 3x3 conv).
    """
    (hs, ws), (ht, wt) = tuple(in_size), tuple(out_size)
    if (hs, ws) == (ht, wt):
        conv: nn.Module = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    elif (hs, ws) == (2 * ht, 2 * wt):
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
    elif (2 * hs, 2 * ws) == (ht, wt):
        conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
    else:
        return ConvRegressor(in_channels, out_channels, (hs, ws), (ht, wt), bn=True, relu=True)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU())


class StudentBranch(nn.Module):
    """Teacher feature at stage i -> transform T_i (`branch_transform`) -> the student's stages
    after i and its classifier (weights of its own, dropped after training)."""

    def __init__(self, transform: nn.Module, student: nn.Module, stage: int):
        super().__init__()
        self.transform = transform
        self.student = student
        self.stage = stage

    def forward(self, teacher_feature: torch.Tensor) -> torch.Tensor:
        return self.student.forward_from(self.stage, self.transform(teacher_feature))

    def extra_repr(self) -> str:
        return f"after student stage {self.stage}"


@register_method
class SFTN(Method):
    """Student-friendly teacher training (Park et al., NeurIPS 2021): train the *teacher* with student branches.

    The network trained by the run is the teacher-to-be (`student.model` of the config);
    `student` here names the (zoo) architecture of the branches. Both are split into their
    stages (`stage_names`; `teacher_stages` names the module ending each stage of a custom
    trained network; a custom branch architecture is registered with `register_model` and
    has `stage_names` and `forward_from`). Lists of different lengths are paired from the
    deepest stage. For every paired stage i but the last (or those in `branches`), a branch =
    transform T_i (`branch_transform`: 1x1 conv + BN + ReLU at equal spatial size) + the
    student's stages after i + its classifier (the branch's copy of the student keeps its
    unused earlier stages: a little memory, no compute). The loss, for teacher logits z_T and
    the logits z_i of the n branches:

        lambda_T CE(z_T, y) + lambda_KL R_i T^2 KL(softmax(z_T / T) || softmax(z_i / T)) + lambda_CE R_i CE(z_i, y)

    R = `branch_reduction`: ``mean`` (default; (1/n) sum_i, as kimyuji/SFTN_kd does) or ``sum``.
    The T^2 factor is that code's too (no effect at its T = 1); the paper's own equation could
    not be read here, so both are taken from that re-implementation, not from the paper.
    By default z_T is not detached in the KL term, so the teacher adapts to its branches
    (`detach_teacher: true` stops that), as in that code. Where the branch terms reach the
    teacher's blocks: by default (`detach_features: false`) also through the transforms into the
    teacher's stages up to each branch point (*interpretation*, from the paper's joint training of
    teacher and branches); `detach_features: true` is that code's form: the teacher's features are
    detached before the branches, so the branch CE and KL train only the transforms and branch
    copies, and reach the teacher through z_T in the KL term alone. Use it
    alone: `losses: {sftn: 1.0}`. Branch weights live in this method (the checkpoint's
    `losses` part); the run's model, saved as usual, is a plain zoo teacher for any method.
    The top-1 of every branch is logged at each evaluation.
    """

    name = "sftn"
    paper = ("Park, Cha, Jeong, Kim & Han, Learning Student-Friendly Teacher Networks for Knowledge "
             "Distillation, NeurIPS 2021")
    needs_teacher = False
    needs_labels = True
    default_taps = "the trained network's stage ends (branch points)"
    typical_weight = 1.0
    token_models = "its branches are zoo CNN students continued from a stage (forward_from)"

    def __init__(self, student: str, student_options: dict[str, Any] | None = None, lambda_t: float = 1.0,
                 lambda_kl: float = 3.0, lambda_ce: float = 1.0, T: float = 1.0, detach_teacher: bool = False,
                 branches: list[int] | None = None, teacher_stages: list[str] | None = None,
                 branch_reduction: Literal["mean", "sum"] = "mean", detach_features: bool = False):
        super().__init__()
        if not student:
            raise ValueError("sftn: name the student architecture of the branches, e.g. {student: resnet8x4}")
        if T <= 0:
            raise ValueError("sftn: temperature T must be positive")
        if min(lambda_t, lambda_kl, lambda_ce) < 0:
            raise ValueError("sftn: lambda_t, lambda_kl and lambda_ce must be >= 0")
        if branch_reduction not in ("mean", "sum"):
            raise ConfigError(f"sftn.branch_reduction: 'mean' or 'sum', got {branch_reduction!r}")
        self.branch_reduction = branch_reduction
        self.student_name, self.student_options = student, dict(student_options or {})
        self.lambda_t, self.lambda_kl, self.lambda_ce, self.T = lambda_t, lambda_kl, lambda_ce, T
        self.detach_teacher = detach_teacher
        self.detach_features = bool(detach_features)
        self.branch_stages = branches
        self.teacher_stages = teacher_stages
        self.branches = nn.ModuleList()

    # ------------------------------------------------------------------ set-up
    def _student(self, num_classes: int, in_channels: int) -> nn.Module:
        from kdforge.models import build_model

        model = build_model(self.student_name, num_classes=num_classes, in_channels=in_channels,
                            **self.student_options)
        if not isinstance(model, StagedNet):
            raise LayerError(f"sftn: {type(model).__name__} has no forward_from(stage, x); branches need it")
        return model

    def _stages(self, trained: nn.Module) -> list[str]:
        stages = list(self.teacher_stages or getattr(trained, "stage_names", None) or [])
        if not stages:
            raise LayerError(f"sftn: {type(trained).__name__} has no `stage_names`; give teacher_stages "
                             f"(the module ending each stage)")
        return stages

    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """`student` is the network being trained: the teacher-to-be. Taps its branch points.

        Stage i of the trained network is paired with stage i of the student; lists of
        different lengths are paired from the deepest stage (e.g. vgg13's five stages with
        MobileNetV2's four: layer2-5 with layer2, 3, 5, 7), as everywhere in kdforge.
        """
        from kdforge.methods.default_taps import pair_from_end

        stages = self._stages(student)
        student_stages = self._student(num_classes=2, in_channels=3).stage_names
        paired, student_paired = pair_from_end(stages, student_stages)
        points = self.branch_stages if self.branch_stages is not None else list(range(len(paired) - 1))
        if not points or any(not 0 <= i < len(paired) - 1 for i in points):
            raise ConfigError(f"sftn.branches: indices of paired stages in 0..{len(paired) - 2} (no branch after "
                              f"the last stage; pairs: {list(zip(paired, student_paired))}), got {points}")
        self.points = sorted(set(points))
        self.student_layers = [paired[i] for i in self.points]
        self.branch_from = [student_stages.index(student_paired[i]) for i in self.points]

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        from kdforge.features import FeatureTaps

        images = example.images
        classes, channels = example.student_logits.shape[1], images.shape[1]
        branches = []
        for i, layer in zip(self.branch_from, self.student_layers):
            branch_student = self._student(classes, channels).to(images.device)
            branch_student.eval()  # the shape probe must not touch the BN statistics
            with torch.no_grad(), FeatureTaps(branch_student, [branch_student.stage_names[i]]) as taps:
                _, feats = taps(images.float())
            branch_student.train()
            target = feats[branch_student.stage_names[i]]
            source = example.student_features[layer]
            if source.dim() != 4 or target.dim() != 4:
                raise LayerError(f"sftn: stage {i} gives {tuple(source.shape[1:])} (trained network) and "
                                 f"{tuple(target.shape[1:])} ({self.student_name}); a transform needs feature maps")
            transform = branch_transform(source.shape[1], target.shape[1], tuple(source.shape[2:]),
                                         tuple(target.shape[2:]))
            branches.append(StudentBranch(transform, branch_student, i).to(images.device))
        self.branches = nn.ModuleList(branches)

    # ------------------------------------------------------------------ loss
    def branch_logits(self, out: StepOutputs) -> list[torch.Tensor]:
        if len(self.branches) != len(self.student_layers):
            raise RuntimeError("sftn: setup() was not called (no branches)")
        features = [out.student_features[layer] for layer in self.student_layers]
        if self.detach_features:
            features = [f.detach() for f in features]
        return [branch(f) for branch, f in zip(self.branches, features)]

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        z_t = out.student_logits.float()
        target = z_t.detach() if self.detach_teacher else z_t
        branch = [z.float() for z in self.branch_logits(out)]
        reduce = torch.mean if self.branch_reduction == "mean" else torch.sum
        kl = reduce(torch.stack([kd_loss(z, target, self.T) for z in branch]))  # T^2 KL(p_T || p_i)
        ce = reduce(torch.stack([F.cross_entropy(z, out.labels) for z in branch]))
        return {"teacher_ce": self.lambda_t * F.cross_entropy(z_t, out.labels),
                "kl": self.lambda_kl * kl, "branch_ce": self.lambda_ce * ce}

    def eval_heads(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        """Logits of every branch, for the engine's per-epoch evaluation."""
        return {f"branch{i}": z for i, z in zip(self.points, self.branch_logits(out))}
