"""``simkd``: a student encoder, a projector and the teacher's own frozen head, as one zoo model.

SimKD (Chen et al., "Knowledge Distillation with the Reused Teacher Classifier", CVPR 2022,
arXiv 2203.14001) trains only the student's encoder and a projector, aligning the projected
last feature map with the teacher's by an L2 loss (`kdforge.methods.simkd`), and classifies
with the teacher's classifier reused as it is. The deployed student is therefore this network:
the student's stages, the projector, and a copy of the teacher's head, frozen. Export, predict
and eval treat it as any zoo model; its record names the student and teacher architectures.

Interpretations (ours): the reused head is the teacher's whole `head` (global pooling and the
classifier; for families whose head begins with a BN-ReLU or a 1x1 conv, those too), kept in eval
mode, so a perfectly aligned feature map gives exactly the teacher's logits; the authors reuse the
final linear layer after their projector. A student map larger than the teacher's is average-pooled
to the teacher's size before the projector (the authors' rule); a smaller one is matched by the loss.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import ConfigError
from kdforge.models.zoo_base import ZooModel, conv1x1, conv3x3
from kdforge.models.registry import build_model, register_model


def last_stage_shape(model: ZooModel, in_channels: int) -> tuple[int, int]:
    """(channels, side) of the last stage's output on one blank image of the model's input size."""
    from kdforge.graft.blocks import block_outputs

    blank = torch.zeros(1, in_channels, model.input_size, model.input_size)
    (out,) = block_outputs(model, [len(model.stage_names) - 1], blank)  # every stage as one block, eval mode
    return out.shape[1], out.shape[2]


def head_only(teacher: ZooModel, feature: torch.Tensor) -> ZooModel:
    """A frozen copy of `teacher` that keeps only what `teacher.head` uses (run on `feature`).

    Every module that the head does not run, and that holds nothing the head runs, is replaced
    by an empty ``nn.Identity``, so the copy's state holds the head's tensors alone. The copy's
    head is checked to give the teacher's logits bit for bit.
    """
    head = copy.deepcopy(teacher).eval().requires_grad_(False)
    called: set[str] = set()
    names = {module: name for name, module in head.named_modules()}
    hooks = [m.register_forward_pre_hook(lambda m, a: called.add(names[m])) for m in names]
    try:
        with torch.no_grad():
            want = head.head(feature)
    finally:
        for hook in hooks:
            hook.remove()

    def used(name: str) -> bool:
        return any(c == name or c.startswith(name + ".") for c in called) or name == ""

    removed: list[str] = []
    for name in [n for n in names.values() if n and not used(n)]:
        if any(name.startswith(r + ".") for r in removed):  # inside a module already removed
            continue
        parent, _, child = name.rpartition(".")
        (head.get_submodule(parent) if parent else head)._modules[child] = nn.Identity()
        removed.append(name)
    with torch.no_grad():
        got = head.head(feature)
    if not torch.equal(want, got):
        raise ConfigError(f"simkd: the head of {type(teacher).__name__} uses modules outside its head; "
                          f"it cannot be reused as a classifier")
    return head


class SimKDNet(ZooModel):
    """A copy of `student`'s stages -> (pool to the teacher's map size) -> `projector` -> the teacher's head.

    The projector is the authors': 1x1 conv to C_t / `factor`, 3x3 conv, 1x1 conv to C_t, each
    followed by BN and ReLU. Taps: the student's under ``base.``; ``projector`` is the aligned map.
    """

    def __init__(self, student: ZooModel, teacher: ZooModel, in_channels: int = 3, factor: int = 2):
        super().__init__()
        for who, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, ZooModel):
                raise ConfigError(f"simkd: the {who} must be a zoo model, got {type(model).__name__}")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ConfigError(f"losses.simkd.factor: a positive integer, got {factor!r}")
        s_channels, s_side = last_stage_shape(student, in_channels)
        t_channels, t_side = last_stage_shape(teacher, in_channels)
        if t_channels % factor:
            raise ConfigError(f"losses.simkd.factor: {factor} does not divide the teacher's {t_channels} channels")
        self.base = copy.deepcopy(student)
        self.base._modules[self.base.classifier_name] = nn.Identity()  # the teacher's classifier replaces it
        #: how much the student's map is pooled to reach the teacher's (1: not)
        self.shrink = s_side // t_side if s_side > t_side else 1
        if s_side > t_side and s_side % t_side:
            raise ConfigError(f"simkd: the student's last map ({s_side}x{s_side}) does not pool evenly to the "
                              f"teacher's ({t_side}x{t_side})")
        mid = t_channels // factor
        self.projector = nn.Sequential(
            conv1x1(s_channels, mid), nn.BatchNorm2d(mid), nn.ReLU(),
            conv3x3(mid, mid), nn.BatchNorm2d(mid), nn.ReLU(),
            conv1x1(mid, t_channels), nn.BatchNorm2d(t_channels), nn.ReLU())
        self.teacher_head = head_only(teacher, torch.zeros(2, t_channels, t_side, t_side))
        self._finish(stage_names=[f"base.{n}" for n in student.stage_names],
                     block_names=[f"base.{n}" for n in student.block_names],
                     classifier_name=f"teacher_head.{teacher.classifier_name}", input_size=student.input_size,
                     init=False)

    def train(self, mode: bool = True) -> "SimKDNet":
        super().train(mode)
        self.teacher_head.eval()  # the reused head keeps the teacher's BN statistics
        return self

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.stem(x)

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.base._stage(i, x)

    def _between(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.base._between(i, x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The student's last stage output -> the aligned map the teacher's head reads."""
        if self.shrink > 1:
            x = F.adaptive_avg_pool2d(x, (math.ceil(x.shape[2] / self.shrink), math.ceil(x.shape[3] / self.shrink)))
        return self.projector(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head.head(self.project(x))


@register_model("simkd", family="simkd", input_size=32, listed=False,
                paper="Chen et al., CVPR 2022 (SimKD's student: projector and the teacher's classifier)")
def simkd(num_classes: int = 100, in_channels: int = 3, student: str = "resnet8x4", student_options: dict | None = None,
          teacher: str = "resnet32x4", teacher_options: dict | None = None, factor: int = 2) -> SimKDNet:
    """SimKD's deployable student: `student`'s stages, a projector and `teacher`'s head (freshly built)."""
    s = build_model(student, num_classes=num_classes, in_channels=in_channels, **(student_options or {}))
    t = build_model(teacher, num_classes=num_classes, in_channels=in_channels, **(teacher_options or {}))
    return SimKDNet(s, t, in_channels, factor)
