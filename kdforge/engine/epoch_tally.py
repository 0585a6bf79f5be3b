"""An epoch's running training metrics: summed on the device, read back once at its end."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import torch


class EpochTotals(NamedTuple):
    """An epoch's training totals over all ranks."""

    names: list[str]  # the loss values' names
    means: list[float]  # each one's mean over the epoch's steps
    correct: int  # training images the student classified right
    seen: int  # training images the applied steps used
    seconds: float  # time in the epoch's steps


class EpochTally:
    """Per-loss sums, correct predictions, images and training time of the current epoch.

    Mid-epoch checkpoints store `state()`, so a resumed epoch reports the same means as an
    uninterrupted one."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] | None = None
        self.sums = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0  # images (this process)
        self.steps = 0  # applied steps
        self.time_s = 0.0  # training time of the parts of the epoch before the current one
        self._clock: float | None = None

    def start_clock(self) -> None:
        self._clock = time.perf_counter()

    def _time(self) -> float:
        return self.time_s + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    def add(self, names: list[str], values: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None) -> None:
        """One applied step: its loss `values` (one per name, detached) and its predictions."""
        with torch.no_grad():
            if self.names is None:
                self.names = names
            self.sums = self.sums + values
            if labels is not None:
                self.correct += (logits.argmax(dim=1) == labels).sum()
        self.seen += logits.shape[0]
        self.steps += 1

    def totals(self, dist) -> "EpochTotals":
        """The epoch's totals over all ranks."""
        if self.names is None:
            return EpochTotals([], [], 0, 0, self._time())
        means = dist.all_reduce_sum(self.sums / max(self.steps, 1)) / dist.world_size
        correct, seen = self._counts(dist)
        return EpochTotals(self.names, means.tolist(), correct, seen, self._time())

    def _counts(self, dist) -> tuple[int, int]:
        """(correct, images) summed over ranks."""
        counts = dist.all_reduce_sum(torch.stack([self.correct, torch.tensor(self.seen, device=self.device)]))
        correct, seen = counts.tolist()
        return int(correct), int(seen)

    def state(self, dist) -> dict[str, Any]:
        """Plain values for a checkpoint, summed over ranks (one device sync)."""
        sums = None if self.names is None else dist.all_reduce_sum(self.sums.clone()).tolist()
        correct, seen = self._counts(dist)
        return {"names": self.names, "sums": sums, "correct": correct, "seen": seen, "steps": self.steps,
                "time_s": self._time()}

    @classmethod
    def restore(cls, state: dict[str, Any] | None, device: torch.device, dist) -> "EpochTally":
        """The tally a checkpoint saved: rank 0 takes the sums of all ranks, the others start from zero."""
        tally = cls(device)
        if state and not dist.is_main:
            tally.names, tally.steps, tally.time_s = state["names"], state["steps"], state["time_s"]
            if state["sums"] is not None:
                tally.sums = torch.zeros(len(state["sums"]), device=device)
        elif state:
            tally.names = state["names"]
            if state["sums"] is not None:
                tally.sums = torch.tensor(state["sums"], dtype=torch.float32, device=device)
            tally.correct = torch.tensor(state["correct"], dtype=torch.long, device=device)
            tally.seen, tally.steps, tally.time_s = state["seen"], state["steps"], state["time_s"]
        return tally
