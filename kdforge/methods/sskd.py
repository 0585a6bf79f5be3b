"""Xu, Liu, Li & Loy, "Knowledge Distillation Meets Self-Supervision", ECCV 2020 (arXiv:2006.07114)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.data.augment import PixelNormalization
from kdforge.errors import ConfigError
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.kd import kd_loss
from kdforge.methods.default_taps import last_layer, shape_error
from kdforge.methods.registry import register_method

#: the rotations each training image is copied at (quarter turns); the batch itself is the 0-degree copy
TURNS = (1, 2, 3)


def projection_head(dim: int) -> nn.Sequential:
    """The authors' self-supervision head on the pooled embedding: Linear(d, d) -> ReLU -> Linear(d, d)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def rotation_similarity(rotated: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """(3N, N) cosine similarities of each rotated copy's projection with every original's."""
    return F.normalize(rotated.float(), dim=1) @ F.normalize(originals.float(), dim=1).t()


def rank_of_target(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, how many entries score strictly above the target's (0: the target is ranked first)."""
    return (scores > scores.gather(1, target[:, None])).sum(dim=1)


def kept_rows(rank: torch.Tensor, keep_wrong: float) -> torch.Tensor:
    """The rows SSKD distils: every row ranked right (rank 0) and the best-ranked `keep_wrong` share of the
    others (ties by row order), as the authors' "error level ranking"; sorted row indices."""
    order = torch.argsort(rank, stable=True)
    wrong = int((rank > 0).sum())
    return torch.sort(order[: rank.numel() - wrong + int(wrong * keep_wrong)]).values


@register_method
class SSKD(Method):
    """SSKD (Xu et al., ECCV 2020): the teacher's knowledge of rotated images, as its class predictions and as
    its similarities in a self-supervised contrastive task.

    Each training batch of N images runs with its copies turned by 90, 180 and 270 degrees (`extra_views`:
    one forward of 4N images through each model; `ce` and `kd` beside it see the N originals only).
    A projection head (Linear-ReLU-Linear) on each model's embedding maps images into a space where a
    rotated copy should be most similar (cosine) to its own original among the batch's N originals.
    The teacher's head is trained first, in a stage before training with the teacher frozen
    (`pretrain_epochs`; cross-entropy over the (3N, N) similarities, the authors' 60 epochs of 240).
    Then, with weights `tf_weight` and `ss_weight` (logged ``sskd/tf``, ``sskd/ss``):

    - tf: KD at `tf_T` on the rotated copies, on those whose label the teacher ranks first and the
      `ratio_tf` best-ranked share of the others;
    - ss: KD at `ss_T` between the rows of the two models' similarity matrices, on the rows where the
      teacher ranks the right original first and the `ratio_ss` best-ranked share of the others.

    The authors' run: 0.1 CE + 0.9 KD (T 4) + 2.7 tf (T 4) + 10 ss (T 0.5), ratios 1.0 and 0.75
    (`configs/cifar100/methods/sskd.yaml`). Interpretations: the head stage uses the run's optimizer at a
    constant rate (the authors: SGD 0.05, x0.1 at 30 and 45 of 60 epochs); a rank counts the entries scoring
    strictly above the target (the authors' argsort breaks ties arbitrarily).
    """

    name = "sskd"
    paper = "Xu, Liu, Li & Loy, Knowledge Distillation Meets Self-Supervision, ECCV 2020"
    default_taps = "embedding (+ a projection head each); copies of each batch turned 90, 180, 270 degrees"
    typical_weight = 1.0
    needs_labels = True
    layer_kind = "embedding"
    pick_layers = staticmethod(last_layer)

    def __init__(self, teacher_layers: list[str] | None = None, student_layers: list[str] | None = None,
                 tf_weight: float = 2.7, ss_weight: float = 10.0, tf_T: float = 4.0, ss_T: float = 0.5,
                 ratio_tf: float = 1.0, ratio_ss: float = 0.75, pretrain_epochs: int = 60):
        super().__init__()
        for key, value in (("tf_T", tf_T), ("ss_T", ss_T)):
            if value <= 0:
                raise ValueError(f"{key}: a temperature must be positive, got {value}")
        for key, value in (("ratio_tf", ratio_tf), ("ratio_ss", ratio_ss)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key}: the share of wrong rows kept, in [0, 1], got {value}")
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs: >= 0, got {pretrain_epochs}")
        self._given_t, self._given_s = teacher_layers, student_layers
        self.tf_weight, self.ss_weight, self.tf_T, self.ss_T = tf_weight, ss_weight, tf_T, ss_T
        self.ratio_tf, self.ratio_ss = ratio_tf, ratio_ss
        self.pretrain_epochs = pretrain_epochs
        self.student_head: nn.Module | None = None
        self.teacher_head: nn.Module | None = None

    def extra_views(self, images: torch.Tensor, normalization: PixelNormalization) -> torch.Tensor:
        if images.shape[-1] != images.shape[-2]:
            raise ConfigError(f"losses.sskd turns images by quarter turns, which needs square images; "
                              f"got {images.shape[-2]}x{images.shape[-1]}")
        return torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in TURNS])

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        (t_name,), (s_name,) = self.teacher_layers, self.student_layers
        t, s = example.teacher_features[t_name], example.student_features[s_name]
        if t.dim() != 2 or s.dim() != 2:
            raise shape_error(self.name, t_name, t, s_name, s, "SSKD's projection heads take embedding vectors")
        self.student_head = projection_head(s.shape[1]).to(s.device)
        self.teacher_head = projection_head(t.shape[1]).to(t.device)

    def pretrain_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        return list(self.teacher_head.parameters())

    @staticmethod
    def _view(out: StepOutputs) -> StepOutputs:
        if out.view is None:
            raise ValueError("sskd needs the outputs on its rotated copies (out.view): run it through the engine, "
                             "which forwards `extra_views` with the batch")
        return out.view

    def _embeddings(self, out: StepOutputs, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(originals, rotated copies) of one side's embedding."""
        (name,) = getattr(self, f"{side}_layers")
        return getattr(out, f"{side}_features")[name], getattr(self._view(out), f"{side}_features")[name]

    def _teacher_similarity(self, out: StepOutputs) -> torch.Tensor:
        originals, rotated = self._embeddings(out, "teacher")
        return rotation_similarity(self.teacher_head(rotated.float()), self.teacher_head(originals.float()))

    @staticmethod
    def _own_original(n: int, device: torch.device) -> torch.Tensor:
        """Each rotated copy's original (rows are copies turned once, then twice, then three times)."""
        return torch.arange(n, device=device).repeat(len(TURNS))

    def pretrain_loss(self, out: StepOutputs) -> torch.Tensor:
        """The teacher head's self-supervised task: each rotated copy picks out its own original."""
        similarity = self._teacher_similarity(out)
        return F.cross_entropy(similarity, self._own_original(similarity.shape[1], similarity.device))

    def forward(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        view = self._view(out)
        n = out.student_logits.shape[0]
        labels = out.labels.repeat(len(TURNS))
        t_rot = view.teacher_logits.detach().float()
        tf_rows = kept_rows(rank_of_target(t_rot, labels), self.ratio_tf)
        with torch.no_grad():
            t_sim = self._teacher_similarity(out)
        s_originals, s_rotated = self._embeddings(out, "student")
        s_sim = rotation_similarity(self.student_head(s_rotated.float()), self.student_head(s_originals.float()))
        ss_rows = kept_rows(rank_of_target(t_sim, self._own_original(n, t_sim.device)), self.ratio_ss)
        return {"tf": self.tf_weight * self._kd_rows(view.student_logits, t_rot, tf_rows, self.tf_T),
                "ss": self.ss_weight * self._kd_rows(s_sim, t_sim, ss_rows, self.ss_T)}

    @staticmethod
    def _kd_rows(student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
        """KD at `temperature` over the kept `rows` (batch mean over them); 0 if none is kept."""
        if rows.numel() == 0:
            return student.sum() * 0.0
        return kd_loss(student[rows], teacher[rows], temperature)
