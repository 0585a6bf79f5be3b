"""How closely a student follows its teacher on a split: top-1 agreement and the predictive KL.

Stanton, Izmailov, Kirichenko, Alemi & Wilson, "Does Knowledge Distillation Really Work?", NeurIPS 2021, call
this the student's *fidelity* to the teacher, as distinct from its accuracy: a student can gain accuracy from a
teacher while matching it poorly, or match a weak teacher closely (SFTN's students, benchmarks/RESULTS.md).
Measured as they do: the share of images on which both models' top-1 class is the same, and the mean
KL(p_teacher || p_student) of the softmax outputs at temperature 1, in nats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.engine.precision import Precision


@torch.inference_mode()
def fidelity(student: nn.Module, teacher: nn.Module, loader, precision: Precision) -> dict[str, float]:
    """{agreement (% of images with the same top-1 class), kl (mean KL(teacher || student), nats), teacher_top1,
    n} of `student` against `teacher` over `loader`, both in eval mode (their modes are given back)."""
    modes = [(sub, sub.training) for m in (student, teacher) for sub in m.modules()]
    student.eval()
    teacher.eval()
    device = precision.device
    same = torch.zeros((), dtype=torch.long, device=device)
    teacher_hits = torch.zeros((), dtype=torch.long, device=device)
    kl_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for images, labels in loader:
            with precision.autocast():
                s, t = student(images), teacher(images)
            s, t = s.float(), t.float()
            if s.shape != t.shape:
                raise ValueError(f"the student gives {tuple(s.shape[1:])} logits and the teacher "
                                 f"{tuple(t.shape[1:])}: they must classify the same classes")
            t_class = t.argmax(1)
            same += (s.argmax(1) == t_class).sum()
            teacher_hits += (t_class == labels).sum()
            log_pt, log_ps = F.log_softmax(t, 1), F.log_softmax(s, 1)
            kl_sum += (log_pt.exp() * (log_pt - log_ps)).sum().double()
            count += labels.shape[0]
    finally:
        for sub, mode in modes:
            sub.training = mode
    if count == 0:
        return {"agreement": float("nan"), "kl": float("nan"), "teacher_top1": float("nan"), "n": 0}
    same_n, hits_n, kl = torch.stack([same.double(), teacher_hits.double(), kl_sum]).tolist()  # one sync
    return {"agreement": 100.0 * same_n / count, "kl": kl / count, "teacher_top1": 100.0 * hits_n / count,
            "n": count}
