"""The loop's counters (`TrainState`, saved in every checkpoint) and what one step gives back (`StepResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


class StepResult(NamedTuple):
    """What one training step gives back."""

    loss_values: dict[str, torch.Tensor]  # the step's loss values by name (`Losses.forward`)
    detached: torch.Tensor  # the same, detached, as one float vector
    logits: torch.Tensor  # the student's logits on the batch
    applied: bool  # whether the update was applied (False: a non-finite step, skipped)


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches done in the current, unfinished epoch (stopped by max_steps)
    step: int = 0  # optimizer steps taken
    best_top1: float = -math.inf  # of the selection split: the validation hold-out if there is one
    best_epoch: int = 0
    elapsed_s: float = 0.0  # wall time spent in fit(), summed over resumes
    train_images: int = 0
    train_time_s: float = 0.0
    skipped_steps: int = 0  # updates dropped for a non-finite loss (train.nonfinite: skip)
    epoch_partial: dict[str, Any] | None = None  # the unfinished epoch's running metrics (mid-epoch checkpoint)
    skipped_files: dict[str, str] = field(default_factory=dict)  # {path: reason}: data.skip_bad_files, every rank's
    history: list[dict[str, Any]] = field(default_factory=list)
