"""How closely a student follows its teacher on a split: top-1 agreement and the predictive KL.

Stanton, Izmailov, Kirichenko, Alemi & Wilson, "Does Knowledge Distillation Really Work?", NeurIPS 2021, call
this the student's *fidelity* to the teacher, as distinct from its accuracy: a student can gain accuracy from a
teacher while matching it poorly, or match a weak teacher closely (SFTN's students, benchmarks/RESULTS.md).
Measured as they do: the share of images on which both models' top-1 class is the same, and the mean
KL(p_teacher || p_student) of the softmax outputs at temperature 1, in nats.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.engine.evaluate import eval_mode
from kdforge.engine.precision import Precision
from kdforge.methods.kd import kd_loss


@torch.inference_mode()
def fidelity(student: nn.Module, teacher: nn.Module, loader, precision: Precision) -> dict[str, float]:
    """{agreement (% of images with the same top-1 class), kl (mean KL(teacher || student), nats), teacher_top1,
    n} of `student` against `teacher` over `loader`, both in eval mode (their modes are given back)."""
    device = precision.device
    same = torch.zeros((), dtype=torch.long, device=device)
    teacher_hits = torch.zeros((), dtype=torch.long, device=device)
    kl_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with eval_mode(student, teacher):
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
            kl_sum += kd_loss(s, t, 1.0).double() * labels.shape[0]  # KL(teacher || student), batch mean at T = 1
            count += labels.shape[0]
    if count == 0:
        return {"agreement": float("nan"), "kl": float("nan"), "teacher_top1": float("nan"), "n": 0}
    same_n, hits_n, kl = torch.stack([same.double(), teacher_hits.double(), kl_sum]).tolist()  # one sync
    return {"agreement": 100.0 * same_n / count, "kl": kl / count, "teacher_top1": 100.0 * hits_n / count,
            "n": count}
