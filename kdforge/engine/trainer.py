"""The one training loop of kdforge: every method and every recipe stage runs through it.

Per step: teacher forward (eval mode, no grad) with taps -> student forward with taps ->
the run's losses (`Losses`) turn those outputs into loss values by name -> one backward and
optimizer step. Everything around the steps is a hook (`engine/hooks/`): the stages before
training, BN recalibration, evaluation, step and epoch records, checkpoints and the summary,
then any hooks the caller adds; a hook's state is saved in checkpoints. Metrics stay on the
device and are read back only every `log_every` steps. Under torchrun the same loop runs on
every rank with DDP (`distributed.py`); only rank 0 writes files. SIGTERM/Ctrl-C save
`last.pt` before stopping; `train.checkpoint_every_steps` saves inside epochs too.
"""

from __future__ import annotations

import functools
import operator
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from kdforge.config import RunConfig, config_from_dict, config_to_dict
from kdforge.data.augment import PixelNormalization
from kdforge.engine import setup
from kdforge.engine.checkpoint import remove_stale_temporaries
from kdforge.engine.distributed import Distributed, wrap_for_ddp
from kdforge.engine.dot import dot_update
from kdforge.engine.epoch_tally import EpochTally
from kdforge.engine.hooks import (AfterPretrainHook, BNRecalibrationHook, CheckpointHook, EpochRecordHook,
                                  EvaluationHook, Hook, Hooks, StepLogHook, SummaryHook)
from kdforge.engine.hooks.quantize import quantize_hooks
from kdforge.engine.hooks.teacher_store import TeacherStoreHook
from kdforge.engine.hooks.trackers import tracker_hooks
from kdforge.engine.interrupts import RunInterrupted, StopSignals
from kdforge.engine.logger import RunLogger
from kdforge.engine.nonfinite import NonFiniteLossError
from kdforge.engine.state import StepResult, TrainState
from kdforge.engine.teacher_outputs import teacher_outputs
from kdforge.engine.training_checkpoint import checkpoint_of, resume as resume_from_last
from kdforge.errors import ConfigError
from kdforge.methods.base import StepOutputs
from kdforge.methods.losses import Losses
from kdforge.models.capabilities import model_record_of

__all__ = ["Trainer", "TrainState", "StepResult", "NonFiniteLossError", "model_record_of", "default_hooks"]


def default_hooks(extra: Sequence[Hook] = (), methods: Sequence[Hook] = (),
                  trackers: Sequence[Hook] = ()) -> list[Hook]:
    """The loop's hooks in calling order: first the `methods`' own (`Losses.loop_hooks`: their stages before
    training, evaluation heads), then the loop's, with `extra` where they see every record before it is
    logged and have their state saved by the checkpoint of the same step or epoch, and last the `trackers`
    (`hooks/trackers.py`), which see the finished record and the summary."""
    return [*methods, AfterPretrainHook(), BNRecalibrationHook(), TeacherStoreHook(), EvaluationHook(),
            StepLogHook(), *extra, EpochRecordHook(), CheckpointHook(), SummaryHook(), *trackers]


class Trainer:
    """Train `student` with the weighted `losses` on `train_data`, evaluating on `eval_data`.

    `val_data` (optional), a hold-out of the training split, is evaluated alongside and chooses
    `best.pt`; without it `eval_data` does. `teacher` (optional) is frozen: eval mode, no
    gradients. The run folder receives the resolved config, `log.jsonl`, TensorBoard logs,
    `checkpoints/{last,best}.pt`, `curves.png` and `summary.json`. `distributed` defaults to the
    running process group; `checkpoint_sources` ({role: `checkpoint_source(...)`}) says which
    checkpoint files the teacher and student started from, for the summary; `hooks` are added to
    the loop's own (`default_hooks`).
    """

    def __init__(self, student: nn.Module, losses: Losses, train_data, eval_data=None, *,
                 val_data=None, teacher: nn.Module | None = None, config: RunConfig | None = None,
                 run_dir: str | Path | None = None, distributed: Distributed | None = None,
                 checkpoint_sources: dict[str, dict[str, Any]] | None = None, hooks: Sequence[Hook] = ()):
        self.cfg = config_from_dict(config_to_dict(config)) if config is not None else RunConfig()  # validated
        self.student = student
        self.teacher = teacher
        self.losses = losses
        self.train_data = train_data
        self.normalization = PixelNormalization(train_data.mean, train_data.std)  # for methods' extra views
        self.eval_data = eval_data
        self.val_data = val_data
        self.checkpoint_sources = dict(checkpoint_sources or {})
        self.run_dir = Path(run_dir) if run_dir is not None else Path(self.cfg.output_dir) / self.cfg.name
        if losses.needs_teacher and teacher is None:
            names = [k for k, m in losses.methods.items() if m.needs_teacher]
            raise ConfigError(f"losses {names} need a teacher: set teacher.checkpoint to a trained run or .pt file")
        self.dist = distributed or Distributed.current()
        if not self.dist.is_main:
            self.cfg.train.progress = False  # one progress bar and one set of messages: rank 0's
        self.hooks = Hooks(default_hooks(hooks, [*quantize_hooks(self.cfg), *losses.loop_hooks()],
                                         tracker_hooks(self.cfg)))
        self.state = TrainState()
        self._prepared = False
        self._ddp: nn.Module | None = None  # student + adapters under DDP, built when training starts
        self.eval_postfix = ""  # the last evaluation, shown on the progress bar
        self.summary: dict[str, Any] | None = None  # set when training ends (SummaryHook)
        self.epoch_finished = False  # whether the epoch the hooks' after_epoch sees ran to its end
        self.signals: StopSignals | None = None  # SIGTERM / Ctrl-C while fit() runs

    def prepare(self) -> None:
        """Bind the methods' layers, run one batch through both models and build the optimizer
        (done by `fit` if not before); raises a config or layer error before any training."""
        if not self._prepared:
            setup.prepare(self)
            self._prepared = True

    def checkpoint(self, with_optimizer: bool = True) -> dict[str, Any]:
        """What `last.pt` (with the optimizer) or `best.pt` holds now."""
        return checkpoint_of(self, with_optimizer)

    @property
    def selection_key(self) -> str:
        """The epoch record's metric that chooses best.pt: the validation hold-out's top-1 if there is one."""
        return "val_top1" if self.val_data is not None and len(self.val_data) > 0 else "eval_top1"

    @property
    def log_every(self) -> int:
        return max(1, self.cfg.train.log_every)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or `until_epoch`); returns the summary.

        SIGTERM / Ctrl-C finish the current step, save `checkpoints/last.pt` and raise
        `RunInterrupted`; `fit(resume=True)` then continues exactly where it stopped."""
        self._fit_start = time.perf_counter()
        self.prepare()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir / "checkpoints")  # left by a process killed while saving
        if resume:
            resume_from_last(self)
        elif self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(_yaml(config_to_dict(self.cfg)))
        self.logger = RunLogger(self.run_dir, tensorboard=self.cfg.train.tensorboard, enabled=self.dist.is_main)
        epochs, steps = self.cfg.schedule.epochs, len(self.train_loader)
        self.last_epoch = epochs if until_epoch is None else min(epochs, until_epoch)
        self.bar = None
        try:
            self.hooks.before_train(self)
            if self.dist.enabled and self._ddp is None:  # after pre-training: DDP starts every rank from rank 0's
                self._ddp = wrap_for_ddp(self.student, self.losses, self._forward_loss_values,  # weights
                                         self.precision.device, self.cfg.train.ddp_find_unused)
            self.bar = tqdm(total=epochs * steps, initial=self.state.epoch * steps + self.state.batch_in_epoch,
                            desc=self.cfg.name, disable=not self.cfg.train.progress, dynamic_ncols=True, leave=True,
                            unit="step", mininterval=0.5)
            self._elapsed_before = self.state.elapsed_s
            with StopSignals() as self.signals:
                while self.state.epoch < self.last_epoch and not self.max_steps_reached():
                    self._run_epoch()
        finally:
            if self.bar is not None:
                self.bar.close()
            self.logger.close()
        self.hooks.after_train(self)
        return self.summary

    def _run_epoch(self) -> None:
        """Train (the rest of) one epoch; then the hooks evaluate, log and save."""
        steps = len(self.train_loader)
        self.hooks.before_epoch(self)
        record = self._train_epoch()
        self.epoch_finished = self.state.batch_in_epoch == steps
        if self.epoch_finished:
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
        record["epoch"] = self.state.epoch + self.state.batch_in_epoch / steps
        record["step"] = self.state.step
        self.hooks.after_epoch(self, record)

    def _train_epoch(self) -> dict[str, Any]:
        self.student.train()
        self.train_loader.set_epoch(self.state.epoch, start_batch=self.state.batch_in_epoch)
        device = self.precision.device
        self.tally = EpochTally.restore(self.state.epoch_partial, device, self.dist)  # a mid-epoch checkpoint's, or new
        self.nonfinite.skipped = (self.state.epoch_partial or {}).get("skipped", 0)
        self.state.epoch_partial = None
        self.tally.start_clock()
        has_labels = self.train_data.has_labels
        for images, labels, indices in self.train_loader:
            result = self._step(images, labels if has_labels else None, indices)
            if result.applied:
                self.tally.add(list(result.loss_values), result.detached, result.logits, labels if has_labels else None)
            self.state.step += 1
            self.state.batch_in_epoch += 1
            self.bar.update(1)
            self.hooks.after_step(self, result)
            if self.max_steps_reached():
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # count the queued work in this epoch's time
        totals = self.tally.totals(self.dist)
        record = {f"train_{name}": value for name, value in zip(totals.names, totals.means)}
        record["train_loss"] = sum(record.values())
        record["train_top1"] = 100.0 * totals.correct / max(totals.seen, 1) if has_labels else None  # label-free
        record["lr"] = self.lr_used
        record["train_img_per_s"] = totals.seen / max(totals.seconds, 1e-9)
        if self.nonfinite.skipped:
            record["skipped_steps"] = self.nonfinite.skipped
        self.state.skipped_steps += self.nonfinite.skipped
        self.nonfinite.skipped = 0
        self.state.train_images += totals.seen
        self.state.train_time_s += totals.seconds
        return record

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None,
                indices: torch.Tensor | None = None) -> StepOutputs:
        """Teacher (no grad) and student forward with taps; call inside `precision.autocast()`.

        With a teacher cache and the batch's training-set `indices`, the teacher's outputs are looked up.
        Methods' extra views (`Method.extra_views`) run with the batch in one forward, each handed back
        as `out.views[key]`."""
        views = self.losses.extra_views(images, self.normalization)
        n = images.shape[0]
        if views:  # one forward of the batch and the methods' extra images (BatchNorm sees them together)
            images = torch.cat([images, *views.values()])
        t_logits, t_feats = None, {}
        if self.use_teacher:
            t_logits, t_feats = teacher_outputs(self, images, n, indices)
        s_logits, s_feats = self.student_taps(images)

        def part(start: int, end: int | None, labels_: torch.Tensor | None, indices_: torch.Tensor | None):
            cut = (lambda x: x) if start == 0 and end is None else (lambda x: x[start:end])
            return StepOutputs(cut(images), labels_, cut(s_logits), None if t_logits is None else cut(t_logits),
                               {k: cut(v) for k, v in s_feats.items()}, {k: cut(v) for k, v in t_feats.items()},
                               self.student, self.teacher, self.state.epoch, self.state.step, indices_,
                               len(self.train_data))

        out, start = part(0, n if views else None, labels, indices), n
        for key, extra in views.items():
            out.views[key] = part(start, start + extra.shape[0], None, None)
            start += extra.shape[0]
        return out

    def _forward_loss_values(self, images: torch.Tensor, labels: torch.Tensor | None,
                             indices: torch.Tensor | None):
        """One step's forward: (loss values by name, student logits); what DDP wraps in a distributed run."""
        out = self.forward(images, labels, indices)
        return self.losses(out), out.student_logits

    def _step(self, images: torch.Tensor, labels: torch.Tensor | None,
              indices: torch.Tensor | None = None) -> StepResult:
        """Forward, backward and update."""
        with self.precision.autocast():
            loss_values, logits = (self._ddp or self._forward_loss_values)(images, labels, indices)
        detached = torch.stack([v.detach().float() for v in loss_values.values()])
        applied = self.nonfinite.observe(list(loss_values), detached, self.state.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        if applied and self.dot_task_keys is not None:
            dot_update(self.optimizer, loss_values, self.dot_task_keys)
        elif applied:
            total = functools.reduce(operator.add, loss_values.values())
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.lr_used = self.optimizer.param_groups[0]["lr"]  # the rate this step used, for the logs
        self.scheduler.step()
        return StepResult(loss_values, detached, logits, applied)

    # ------------------------------------------------------------------ time and stopping
    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._fit_start

    def max_steps_reached(self) -> bool:
        limit = self.cfg.train.max_steps
        return limit is not None and self.state.step >= limit

    def stopping(self) -> bool:
        """Whether the epoch just ended is the run's last (its last epoch, or `train.max_steps`)."""
        return self.state.epoch >= self.last_epoch or self.max_steps_reached()

    def stop_requested(self, at_sync_point: bool) -> bool:
        """A signal asked to stop. Alone: checked every step. Distributed: ranks agree at sync points only."""
        asked = self.signals is not None and self.signals.requested is not None
        if not self.dist.enabled:
            return asked
        return at_sync_point and self.dist.any(asked, self.precision.device)

    def stop(self) -> None:
        """Raise `RunInterrupted` for the signal received (the caller has saved `last.pt`)."""
        signum = self.signals.requested or signal.SIGTERM
        message = (f"{signal.Signals(signum).name} received: stopped after step {self.state.step} and saved "
                   f"{self.run_dir / 'checkpoints' / 'last.pt'}; continue with --resume")
        if self.dist.is_main:
            print(message, file=sys.stderr, flush=True)
        raise RunInterrupted(signum, message)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
