"""Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020 (arXiv:1910.10699)."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kdforge.errors import ConfigError, LayerError
from kdforge.methods.adapters import LinearEmbed
from kdforge.methods.base import Method, StepOutputs
from kdforge.methods.default_taps import resolve_layers, shape_error
from kdforge.methods.registry import register_method


def sample_negatives(positives: torch.Tensor, num_samples: int, k: int) -> torch.Tensor:
    """(B, k) dataset indices, drawn uniformly with replacement from range(num_samples) minus each row's positive.

    Draws from the global torch RNG of the positives' device (saved in checkpoints).
    """
    draw = torch.randint(0, num_samples - 1, (positives.shape[0], k), device=positives.device)
    return draw + (draw >= positives[:, None]).long()  # skip the positive: uniform over the other n - 1


def nce_loss(log_p_pos: torch.Tensor, log_p_neg: torch.Tensor, log_noise: float,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """CRD's NCE loss (the paper's Eq. 18) from log P of the positive (B,) and negative (B, M) pairs.

    With P = exp(s / tau) / Z and the noise term m P_n = K / N (`log_noise` = log(K / N)):
    -(1/B) sum_b [log h(pos_b) + sum_k log(1 - h(neg_bk))], h = P / (P + K / N).
    `weight` (B, M) counts each negative column (a 0/1 mask, or how often it was drawn).
    """
    pos = log_p_pos - torch.logaddexp(log_p_pos, torch.full_like(log_p_pos, log_noise))
    neg = log_noise - torch.logaddexp(log_p_neg, torch.full_like(log_p_neg, log_noise))
    if weight is not None:
        neg = neg * weight
    return -(pos.sum() + neg.sum()) / log_p_pos.shape[0]


def check_pairs(teacher_layers: list[str], student_layers: list[str]) -> None:
    """CRD pairs teacher and student layers one to one: the lists need the same, non-zero length."""
    if len(teacher_layers) != len(student_layers) or not teacher_layers:
        raise LayerError(f"crd contrasts teacher and student layers in pairs, one to one; got "
                         f"{len(teacher_layers)} teacher layers {teacher_layers} and {len(student_layers)} "
                         f"student layers {student_layers}")


class ContrastHead(nn.Module):
    """CRD on one teacher/student layer pair: two embedding heads, a bank (or queue) per side and two Z's.

    `forward` takes the pair's features, the batch's dataset indices and the step's
    negatives (bank mode), returns the pair's loss and, in training mode, updates its
    banks or queues. Draws nothing at random after construction: `CRD` draws the negatives.
    """

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int, num_samples: int, k: int, nce_t: float,
                 nce_m: float, mode: str, queue_size: int, device: torch.device):
        super().__init__()
        self.num_samples, self.k, self.nce_t, self.nce_m = num_samples, k, nce_t, nce_m
        self.mode, self.queue_size = mode, queue_size
        self.embed_s = LinearEmbed(s_dim, feat_dim, normalize=True).to(device)
        self.embed_t = LinearEmbed(t_dim, feat_dim, normalize=True).to(device)
        # NCE normalisers of the student-anchored and teacher-anchored scores; < 0 until the first batch
        self.register_buffer("z_s", torch.tensor(-1.0, device=device))
        self.register_buffer("z_t", torch.tensor(-1.0, device=device))
        stdv = 1.0 / math.sqrt(feat_dim / 3)  # rows of about unit norm, as in the authors' code

        def rows(count: int) -> torch.Tensor:
            return (torch.rand(count, feat_dim, device=device) * 2 - 1) * stdv

        if mode == "bank":
            self.register_buffer("memory_s", rows(num_samples))
            self.register_buffer("memory_t", rows(num_samples))
        else:
            self.register_buffer("queue_s", rows(queue_size))
            self.register_buffer("queue_t", rows(queue_size))
            self.register_buffer("queue_idx", torch.full((queue_size,), -1, dtype=torch.long, device=device))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long, device=device))

    def embed(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised float32 embeddings (student, teacher); no gradient reaches the teacher."""
        with torch.autocast(f_s.device.type, enabled=False):
            return self.embed_s(f_s.float()), self.embed_t(f_t.detach().float())

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None,
                full: bool) -> torch.Tensor:
        """Both NCE losses of the pair; `neg` (B, K) bank rows (None in queue mode), `full`: see `_scores`."""
        v_s, v_t = self.embed(f_s, f_t)
        if self.mode == "bank":
            pairs_s = self._scores(v_s, self.memory_t, pos, neg, full)  # student anchor, teacher bank
            pairs_t = self._scores(v_t, self.memory_s, pos, neg, full)  # teacher anchor, student bank
        else:
            pairs_s = self._scores(v_s, v_t, pos, None, full, self.queue_t)  # student anchor, teacher queue
            pairs_t = self._scores(v_t, v_s, pos, None, full, self.queue_s)  # teacher anchor, student queue
        log_noise = math.log(self.k / self.num_samples)
        loss = self._nce(*pairs_s, self.z_s, log_noise) + self._nce(*pairs_t, self.z_t, log_noise)
        if self.training:
            self._update(pos, v_s.detach(), v_t.detach(), full)
        return loss

    def _scores(self, v: torch.Tensor, other: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None,
                full: bool, queue: torch.Tensor | None = None):
        """(positive scores (B,), negative scores (B, M), weight of each negative column or None).

        Bank mode (`other` is the other side's bank): the positive is bank[pos]; with the
        full-score path (`full`) every bank row is scored by one matmul and weighted by how
        often it was drawn (no scatter in the backward, so it is deterministic on GPUs too
        and needs less memory than gathering B x K rows), else the K drawn rows are gathered.
        Queue mode (`other` is the other side's current embedding): `queue` holds the negatives.
        """
        if queue is not None:
            valid = (self.queue_idx[None, :] != pos[:, None]).to(v.dtype)  # never the sample itself
            return (v * other.detach()).sum(1), v @ queue.t(), valid
        positive = (v * other[pos]).sum(1)
        if full:
            counts = torch.zeros(v.shape[0], other.shape[0], device=v.device, dtype=v.dtype)
            counts.scatter_add_(1, neg, torch.ones_like(neg, dtype=v.dtype))  # exact small integers
            return positive, v @ other.t(), counts
        return positive, torch.einsum("bkd,bd->bk", other[neg], v), None  # other[neg] is a copy

    def _nce(self, pos: torch.Tensor, neg: torch.Tensor, weight: torch.Tensor | None, z: torch.Tensor,
             log_noise: float) -> torch.Tensor:
        """NCE loss with log P = s / T - log Z; Z is set from the first batch's pairs and then kept (no sync)."""
        pos, neg = pos / self.nce_t, neg / self.nce_t
        with torch.no_grad():
            if weight is None:
                mean = (pos.exp().sum() + neg.exp().sum()) / (pos.numel() + neg.numel())
            else:
                mean = (pos.exp().sum() + (neg.exp() * weight).sum()) / (pos.numel() + weight.sum())
            z.copy_(torch.where(z > 0, z, mean * self.num_samples))
        log_z = z.log()
        return nce_loss(pos - log_z, neg - log_z, log_noise, weight)

    @torch.no_grad()
    def _update(self, pos: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor, full: bool) -> None:
        """Momentum update of the banks' rows `pos`, or push onto the queues.

        The step's backward still needs a bank or queue that was multiplied whole (the
        matmul path, the queues), so those are replaced by updated copies, not changed in place.
        """
        if self.mode == "bank":
            m = self.nce_m
            for name, v in (("memory_s", v_s), ("memory_t", v_t)):
                bank = getattr(self, name)
                rows = F.normalize(bank[pos] * m + v * (1 - m), dim=1)
                if full:
                    setattr(self, name, bank.index_copy(0, pos, rows))
                else:
                    bank.index_copy_(0, pos, rows)
            return
        q = self.queue_size
        if pos.shape[0] > q:  # only the newest q fit
            pos, v_s, v_t = pos[-q:], v_s[-q:], v_t[-q:]
        slots = (self.queue_ptr + torch.arange(pos.shape[0], device=pos.device)) % q
        self.queue_s = self.queue_s.index_copy(0, slots, v_s)
        self.queue_t = self.queue_t.index_copy(0, slots, v_t)
        self.queue_idx = self.queue_idx.index_copy(0, slots, pos)
        self.queue_ptr = (self.queue_ptr + pos.shape[0]) % q

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


@register_method
class CRD(Method):
    """Contrastive representation distillation (Tian et al., ICLR 2020): NCE between teacher and student embeddings.

    Both penultimate features (the default layers) are embedded by linear heads to
    `feat_dim` and L2-normalised. A memory bank per side (N x feat_dim, N = training-set size) holds a
    momentum average of each sample's embedding; for every sample, the student's
    embedding is contrasted with the teacher bank's entry of the same sample (positive)
    and `nce_k` entries of other samples (negatives: drawn uniformly with replacement
    from the other N - 1 samples with the global torch RNG, so resume is exact), and
    symmetrically the teacher's embedding with the student bank. The loss is the sum of
    both NCE losses; gradient flows through each side's current embedding (anchor), never
    through bank entries or into the teacher network (only its embedding head trains).
    Z, the NCE normaliser, is estimated once from the first training batch
    (N * mean exp(score / T) over its pairs) and kept as a buffer, as in the paper's code.
    Bank rows of the batch are then updated: normalize(m * row + (1 - m) * embedding).

    Several layer pairs (`teacher_layers[i]` with `student_layers[i]`, e.g. the
    intermediate layers PURSUhInT hints give) are contrasted independently, each by its
    own `ContrastHead` (embedding heads, banks or queues, Z's), and the losses summed.
    One set of negative indices is drawn per step and shared by every head (one draw, so
    a single pair draws exactly as before and resume stays exact). Features, maps
    (N, C, H, W) included, are flattened by the linear embedding heads: for a large early
    map that is a C * H * W x `feat_dim` layer (8.4M weights for 64 x 32 x 32), and
    every pair adds two banks of N x `feat_dim`.

    `mode: queue` replaces the per-sample banks with MoCo-style FIFO queues of the last
    `queue_size` embeddings (for datasets too large for a bank): the positive is the
    other network's current embedding of the sample (no gradient through it), the
    negatives are the whole queue, minus entries of the same sample; `nce_k` is unused.

    Banks, queues and Z are buffers on the training device, saved in checkpoints.
    `nce_k` is clamped to N - 1 on small datasets (with a warning). The usual weight is
    0.8 with `ce` 1.0 (`losses: {ce: 1.0, crd: 0.8}`); add `kd` 1.0 for CRD+KD.
    """

    supports_distributed = False  # each rank would update only its own images' memory-bank rows

    name = "crd"
    paper = "Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020"
    default_taps = "embedding"
    uses_hints = True
    typical_weight = 0.8
    tunable = {"nce_t": (0.02, 0.5)}
    #: score every bank entry with one matmul (then pick) while the bank has at most this
    #: many times the K + 1 entries a row uses; beyond, gather the K + 1 rows first
    full_scores_ratio = 8

    def __init__(self, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_m: float = 0.5,
                 mode: Literal["bank", "queue"] = "bank", queue_size: int = 16384,
                 teacher_layers: list[str] | None = None, student_layers: list[str] | None = None):
        super().__init__()
        if feat_dim < 1 or nce_k < 1 or queue_size < 1:
            raise ValueError("crd: feat_dim, nce_k and queue_size must be positive")
        if nce_t <= 0:
            raise ValueError("crd: temperature nce_t must be positive")
        if not 0.0 <= nce_m < 1.0:
            raise ValueError("crd: momentum nce_m must be in [0, 1)")
        if mode not in ("bank", "queue"):
            raise ValueError(f"crd: mode must be 'bank' or 'queue', got {mode!r}")
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = feat_dim, nce_k, nce_t, nce_m
        self.mode, self.queue_size = mode, queue_size
        self._given_t, self._given_s = teacher_layers, student_layers
        self.heads = nn.ModuleList()  # one ContrastHead per layer pair, built in setup
        self.num_samples = 0  # N, set in setup
        self.k = 0  # negatives per positive, set in setup
        self.last_indices: torch.Tensor | None = None  # (B, 1 + K) bank rows of the last step (bank mode)

    # ------------------------------------------------------------------ set-up
    def bind(self, student: nn.Module, teacher: nn.Module | None) -> None:
        if teacher is None:
            raise ConfigError("crd needs a teacher")
        t = resolve_layers(teacher, self._given_t, "embedding")
        s = resolve_layers(student, self._given_s, "embedding")
        check_pairs(t, s)
        self.teacher_layers, self.student_layers = t, s

    def setup(self, student: nn.Module, teacher: nn.Module | None, example: StepOutputs) -> None:
        check_pairs(self.teacher_layers, self.student_layers)
        pairs = list(zip(self.teacher_layers, self.student_layers))
        for t_name, s_name in pairs:
            f_t, f_s = example.teacher_features[t_name], example.student_features[s_name]
            if f_t.dim() < 2 or f_s.dim() < 2 or f_t[0].numel() == 0 or f_s[0].numel() == 0:
                raise shape_error("crd", t_name, f_t, s_name, f_s,
                                  "CRD embeds one feature vector per sample; both tensors need a batch "
                                  "dimension and at least one feature")
        n = int(example.num_train_samples)
        if n < 2:
            raise ConfigError(f"crd needs the training-set size (StepOutputs.num_train_samples >= 2), got {n}")
        self.num_samples = n
        if self.mode == "bank":
            self.k = min(self.nce_k, n - 1)
            if self.k < self.nce_k:
                warnings.warn(f"crd: nce_k={self.nce_k} is more than the {n - 1} other training samples; "
                              f"using {self.k} negatives per positive", stacklevel=2)
        else:
            self.k = self.queue_size
        self.heads = nn.ModuleList(self._head(example.student_features[s_name], example.teacher_features[t_name])
                                   for t_name, s_name in pairs)

    def _head(self, f_s: torch.Tensor, f_t: torch.Tensor) -> ContrastHead:
        """A fresh head for one pair, on the student feature's device."""
        return ContrastHead(f_s[0].numel(), f_t[0].numel(), self.feat_dim, self.num_samples, self.k, self.nce_t,
                            self.nce_m, self.mode, self.queue_size, f_s.device)

    # ------------------------------------------------------------------ loss
    def _full_scores(self) -> bool:
        """Score all N bank rows with one matmul (the backward then needs the bank itself)?"""
        return self.num_samples <= self.full_scores_ratio * (self.k + 1)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        if not self.heads:
            raise RuntimeError("crd: setup() must run before the first forward")
        if out.indices is None:
            raise ValueError("crd needs the dataset indices of the batch (StepOutputs.indices)")
        pos = out.indices.to(device=self.heads[0].z_s.device, dtype=torch.long)
        full = self._full_scores()
        with torch.autocast(pos.device.type, enabled=False):
            neg = None
            if self.mode == "bank":  # one draw per step, shared by every head
                neg = sample_negatives(pos, self.num_samples, self.k)
                self.last_indices = torch.cat([pos[:, None], neg], dim=1)
            losses = [head(out.student_features[s_name], out.teacher_features[t_name], pos, neg, full)
                      for head, t_name, s_name in zip(self.heads, self.teacher_layers, self.student_layers)]
        return sum(losses[1:], losses[0])  # K = 1: the head's loss itself

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, pairs={len(self.heads)}, feat_dim={self.feat_dim}, negatives={self.k}, "
                f"T={self.nce_t}, momentum={self.nce_m}, N={self.num_samples}")
