"""The one training loop of kdforge: every method and every recipe stage runs through it.

Per step: teacher forward (eval mode, no grad) with taps -> student forward with taps ->
the run's methods turn those outputs into named, weighted losses -> one backward and
optimizer step. Metrics stay on the device and are read back only every `log_every`
steps, so logging does not stall the accelerator. Under torchrun the same loop runs on
every rank with DDP (`distributed.py`); only rank 0 writes files. SIGTERM/Ctrl-C save
`last.pt` before stopping; `train.checkpoint_every_steps` saves inside epochs too.
"""

from __future__ import annotations

import functools
import math
import operator
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from kdforge.config import TRAJECTORY_KEYS, RunConfig, config_from_dict, config_to_dict, with_current_defaults
from kdforge.data.augment import PixelNormalization
from kdforge.engine.checkpoint import FORMAT, atomic_save, load_checkpoint, load_weights, remove_stale_temporaries
from kdforge.engine.distributed import Distributed, refuse_unsupported, wrap_for_ddp
from kdforge.engine.epoch_tally import EpochTally
from kdforge.engine.evaluate import evaluate
from kdforge.engine.interrupts import RunInterrupted, StopSignals
from kdforge.engine.logger import RunLogger, truncate_log
from kdforge.engine.nonfinite import NonFiniteGuard, NonFiniteLossError
from kdforge.engine.optim import build_optimizer, build_scheduler
from kdforge.engine.precision import Precision, resolve_device, resolve_precision
from kdforge.engine.pretrain import run_pretrain_stages
from kdforge.engine.seeding import restore_rng_state, rng_state
from kdforge.engine.teacher_cache import TeacherCache, check_teacher_cache
from kdforge.errors import CheckpointError, ConfigError
from kdforge.features import FeatureTaps
from kdforge.models.capabilities import MultiPathNet
from kdforge.methods.base import StepOutputs
from kdforge.methods.compose import LossComposer
from kdforge.models.complexity import count_macs


__all__ = ["Trainer", "TrainState", "NonFiniteLossError", "model_record_of"]


def model_record_of(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild `model` from the zoo (set by `build_model`), or None for a custom model."""
    return getattr(model, "zoo_record", None)


class StepResult(NamedTuple):
    """What one training step gives back."""

    losses: dict[str, torch.Tensor]  # the weighted terms by name
    values: torch.Tensor  # their detached float values, one vector
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
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Train `student` with the weighted `losses` on `train_data`, evaluating on `eval_data`.

    `val_data` (optional), a hold-out of the training split, is evaluated alongside and chooses
    `best.pt`; without it `eval_data` does. `teacher` (optional) is frozen: eval mode, no
    gradients. The run folder receives the resolved config, `log.jsonl`, TensorBoard logs,
    `checkpoints/{last,best}.pt`, `curves.png` and `summary.json`. `distributed` defaults to the
    running process group; `checkpoint_sources` ({role: `checkpoint_source(...)`}) says which
    checkpoint files the teacher and student started from, for the summary.
    """

    def __init__(self, student: nn.Module, losses: LossComposer, train_data, eval_data=None, *,
                 val_data=None, teacher: nn.Module | None = None, config: RunConfig | None = None,
                 run_dir: str | Path | None = None, distributed: Distributed | None = None,
                 checkpoint_sources: dict[str, dict[str, Any]] | None = None):
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
        self.state = TrainState()
        self._prepared = False
        self._ddp: nn.Module | None = None  # student + adapters under DDP, built when training starts
        self._eval_postfix = ""  # the last evaluation, shown on the progress bar

    # ------------------------------------------------------------------ set-up
    def prepare(self) -> None:
        """Bind the methods' layers, run one batch through both models and build the optimizer
        (done by `fit` if not before); raises a config or layer error before any training."""
        if not self._prepared:
            self._prepare()

    def _prepare(self) -> None:
        cfg, tcfg = self.cfg, self.cfg.train
        device = self.dist.device(resolve_device(tcfg.device))
        self.precision: Precision = resolve_precision(tcfg.precision, tcfg.channels_last, device)
        fmt = self.precision.memory_format()
        if self.dist.enabled:
            refuse_unsupported(self.losses, cfg.optim.name)
            self._convert_sync_bn(device)
        self.student.to(device=device, memory_format=fmt)
        self.use_teacher = self.teacher is not None and self.losses.needs_teacher
        if self.use_teacher:
            self.teacher.to(device=device, memory_format=fmt).eval().requires_grad_(False)
        self.teacher_cache: TeacherCache | None = None  # train.teacher_cache: teacher outputs by dataset index
        if tcfg.teacher_cache and self.use_teacher:
            check_teacher_cache(cfg)  # refused under random augmentation, before any forward pass

        from kdforge.data import Augment, TensorLoader

        aug = cfg.data.augment
        augment = Augment(crop_padding=aug.crop_padding, hflip=aug.hflip)
        d = self.dist  # each rank takes its share of every global batch, and of the evaluation set
        self.train_loader = TensorLoader(
            self.train_data, d.per_rank_batch(cfg.data.batch_size), shuffle=True,
            drop_last=cfg.data.drops_last_batch, device=device,
            augment=augment, seed=cfg.seed, channels_last=self.precision.channels_last, with_indices=True,
            rank=d.rank, world_size=d.world_size)
        if len(self.train_loader) == 0:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is larger than the training set "
                              f"({len(self.train_data)} images)")
        #: (record prefix, this rank's loader) of each evaluation set; a rank with an empty share still takes
        #: part in the sums over ranks (with no batches)
        self.eval_sets = [(prefix, self._eval_loader(data, device) or ())
                          for prefix, data in (("eval", self.eval_data), ("val", self.val_data))
                          if data is not None and len(data) > 0]
        self._has_eval = bool(self.eval_sets)

        self.losses.bind(self.student, self.teacher if self.use_teacher else None)
        runner = torch.compile(self.student) if tcfg.compile else None
        self.student_taps = FeatureTaps(self.student, self.losses.student_taps, runner=runner, role="student")
        self.teacher_taps = (FeatureTaps(self.teacher, self.losses.teacher_taps, role="teacher")
                             if self.use_teacher else None)
        self._dry_run(device)
        if tcfg.teacher_cache and self.use_teacher:  # built with every tap, those of stages before training too
            self.teacher_cache = TeacherCache.build(self.teacher_taps, self.train_data, self.precision,
                                                    cfg.data.eval_batch_size, tcfg.teacher_cache_max_gb)
        if tcfg.teacher_cache and tcfg.progress:
            print(self.teacher_cache.describe() if self.teacher_cache is not None else
                  "train.teacher_cache: no loss needs the teacher, nothing to cache", flush=True)
        self.losses.to(device=device)
        if self.precision.channels_last:
            self.losses.to(memory_format=torch.channels_last)

        params = [*self.student.named_parameters(),
                  *((f"losses.{key}.{n}", p) for key, m in self.losses.methods.items() for n, p in m.named_parameters())]
        self._dot_task_keys = self._dot_task_terms() if cfg.optim.name == "dot" else None
        self.optimizer = build_optimizer(params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, len(self.train_loader))
        self.scaler = self.precision.grad_scaler()
        self._lr_used = self.optimizer.param_groups[0]["lr"]
        self.nonfinite = NonFiniteGuard(tcfg.nonfinite, device, self.dist)
        self._prepared = True

    def _eval_loader(self, data, device: torch.device):
        """A loader over this rank's share of an evaluation set (None for no or an empty set)."""
        from kdforge.data import TensorLoader

        d = self.dist
        share = None if data is None else (
            data.subset(torch.arange(d.rank, len(data), d.world_size)) if d.enabled else data)
        if share is None or len(share) == 0:
            return None
        return TensorLoader(share, self.cfg.data.eval_batch_size, shuffle=False, drop_last=False, device=device,
                            augment=None, seed=self.cfg.seed, channels_last=self.precision.channels_last)

    def _convert_sync_bn(self, device: torch.device) -> None:
        """train.sync_bn: BatchNorm over the global batch (GPUs only: PyTorch has no CPU SyncBatchNorm)."""
        if not self.cfg.train.sync_bn:
            return
        if device.type != "cuda":
            raise ConfigError("train.sync_bn: SyncBatchNorm runs on GPUs only; on CPU each process normalises "
                              "over its own share of the batch (set train.sync_bn=false)")
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        if converted is not self.student:
            raise ConfigError("train.sync_bn: the student is a bare BatchNorm layer")

    @torch.no_grad()
    def _dry_run(self, device: torch.device) -> None:
        """One small batch through both models: check classes, let methods build adapters by shape."""
        from kdforge.data import TensorLoader

        n = min(len(self.train_data), 8)
        example_loader = TensorLoader(self.train_data.subset(torch.arange(n)), n, shuffle=False,
                                      drop_last=False, device=device, augment=None, seed=0,
                                      channels_last=self.precision.channels_last)
        images, labels = next(iter(example_loader))
        labels = labels if self.train_data.has_labels else None
        was_training = self.student.training
        self.student.eval()
        try:
            s_logits, s_feats = self.student_taps.run_eager(images)
            t_logits, t_feats = (None, {})
            if self.use_teacher:
                t_logits, t_feats = self.teacher_taps(images)
        finally:
            self.student.train(was_training)
        classes = self.train_data.num_classes
        for who, logits in (("student", s_logits), ("teacher", t_logits)):
            if logits is not None and logits.shape[1] != classes:
                raise ConfigError(f"the {who} outputs {logits.shape[1]} classes but the dataset "
                                  f"'{self.train_data.name}' has {classes}")
        example = StepOutputs(images, labels, s_logits, t_logits, dict(s_feats), dict(t_feats),
                              self.student, self.teacher, indices=torch.arange(n, device=device),
                              num_train_samples=len(self.train_data))
        self.losses.setup(self.student, self.teacher if self.use_teacher else None, example)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, with_optimizer: bool = True) -> dict[str, Any]:
        data = self.train_data
        ckpt = {
            "format": FORMAT,
            "model": model_record_of(self.student),
            "student": self.student.state_dict(),
            "losses": self.losses.state_dict(),
            "state": vars(self.state).copy(),
            "config": config_to_dict(self.cfg),
            # how best.pt is chosen: the metric, on which split (read by `checkpoint_source`)
            "selection": {"split": self.cfg.data.selection_split, "metric": self._selection_key},
            "data": {"name": data.name, "classes": list(data.classes), "mean": list(data.mean),
                     "std": list(data.std), "image_size": data.image_size, "in_channels": data.in_channels},
        }
        if with_optimizer:
            ckpt.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                        scaler=self.scaler.state_dict(), rng=rng_state())
        return ckpt

    def _resume(self) -> None:
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
        ckpt = load_checkpoint(self.run_dir, "last", map_location="cpu")
        self._check_same_config(ckpt["config"], ckpt["path"])
        try:
            load_weights(self.student, ckpt["student"], ckpt["path"])
            self.losses.load_state_dict(ckpt["losses"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"cannot resume from {ckpt['path']}: {exc}") from None
        restore_rng_state(ckpt["rng"])
        self.state = TrainState(**ckpt["state"])
        if self.dist.is_main:
            truncate_log(self.run_dir, self.state.step)  # drop records written after this checkpoint

    def _check_same_config(self, saved: dict[str, Any], path: str) -> None:
        now = config_to_dict(self.cfg)
        saved = with_current_defaults(saved)  # keys added to kdforge since that run was saved: their defaults
        changed = []
        for key in TRAJECTORY_KEYS:
            a, b = saved, now
            for part in key.split("."):
                a, b = a.get(part), b.get(part)
            changed += _differences(key, a, b)
        if changed:
            raise ConfigError(f"--resume: {'; '.join(changed)} differ from the run in {path}. A resumed run "
                              f"keeps its config; start a new run with --set name=NEW_NAME instead")

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured number of epochs (or `until_epoch`); returns the summary.

        SIGTERM / Ctrl-C finish the current step, save `checkpoints/last.pt` and raise
        `RunInterrupted`; `fit(resume=True)` then continues exactly where it stopped."""
        self._fit_start = time.perf_counter()
        if not self._prepared:
            self._prepare()
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.run_dir / "checkpoints")  # left by a process killed while saving
        if resume:
            self._resume()
        elif main:
            (self.run_dir / "config.yaml").write_text(_yaml(config_to_dict(self.cfg)))
        logger = RunLogger(self.run_dir, tensorboard=self.cfg.train.tensorboard, enabled=main)
        if self.state.step == 0:
            with StopSignals() as self._signals:
                try:
                    run_pretrain_stages(self, logger, self._stage_stop_requested)
                except RunInterrupted as exc:
                    logger.close()
                    if self.dist.is_main:
                        print(exc, file=sys.stderr, flush=True)
                    raise
        self._drop_pretrain_only_taps()
        if self.dist.enabled and self._ddp is None:  # after pre-training: DDP starts every rank from rank 0's weights
            self._ddp = wrap_for_ddp(self.student, self.losses, self._forward_and_losses, self.precision.device,
                                     self.cfg.train.ddp_find_unused)
        epochs = self.cfg.schedule.epochs
        last_epoch = epochs if until_epoch is None else min(epochs, until_epoch)
        steps = len(self.train_loader)
        bar = tqdm(total=epochs * steps, initial=self.state.epoch * steps + self.state.batch_in_epoch,
                   desc=self.cfg.name, disable=not self.cfg.train.progress, dynamic_ncols=True, leave=True,
                   unit="step", mininterval=0.5)
        self._elapsed_before = self.state.elapsed_s
        try:
            with StopSignals() as self._signals:
                while self.state.epoch < last_epoch and not self._max_steps_reached():
                    self._run_epoch(logger, bar, last_epoch)
        finally:
            bar.close()
            logger.close()
        return self._write_summary()

    def _run_epoch(self, logger: RunLogger, bar, last_epoch: int) -> None:
        """Train (the rest of) one epoch, evaluate when due, log and save."""
        epochs, steps = self.cfg.schedule.epochs, len(self.train_loader)
        record = self._train_epoch(logger, bar)
        finished = self.state.batch_in_epoch == steps
        if finished:
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
        stopping = self.state.epoch >= last_epoch or self._max_steps_reached()
        record["epoch"] = self.state.epoch + self.state.batch_in_epoch / steps
        record["step"] = self.state.step
        due = finished and self.state.epoch % self.cfg.train.eval_every == 0
        if finished and self.state.epoch == epochs:
            self._recalibrate_bn()
        if self._has_eval and (due or stopping):
            for prefix, loader in self.eval_sets:
                metrics = self._evaluate(loader)
                record.update({f"{prefix}_{k}": v for k, v in metrics.items() if k != "n"})
            self._eval_postfix = self._postfix(record)
            bar.set_postfix_str(self._eval_postfix.removeprefix(" | "), refresh=False)
        self.state.elapsed_s = self._elapsed()
        record["elapsed_s"] = round(self.state.elapsed_s, 3)
        self.state.history.append(record)
        logger.log("epoch", record, step=self.state.step)
        self._save_checkpoints(record)
        if self._stop_requested(at_sync_point=True):
            self._stop()

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._fit_start

    def _evaluate(self, loader) -> dict[str, Any]:
        """The trained network's metrics on `loader`, and the top-1 of methods' own heads (e.g. SFTN's branches)."""
        with_heads = {key: m for key, m in self.losses.methods.items()
                      if m.has_eval_heads and m in self.losses.active()}
        self.dist.broadcast_buffers(self.student)  # every rank evaluates rank 0's model (BN statistics)
        reduce = self.dist.all_reduce_sum
        if not with_heads:
            return evaluate(self.student, loader, self.precision, reduce=reduce)

        def heads(images: torch.Tensor, labels: torch.Tensor):
            logits, feats = self.student_taps(images)
            out = StepOutputs(images, labels, logits, student_features=feats, student=self.student,
                              epoch=self.state.epoch, step=self.state.step)
            return logits, {f"{key}/{name}": z for key, m in with_heads.items() for name, z in m.eval_heads(out).items()}

        return evaluate(self.student, loader, self.precision, heads=heads, also_eval=[self.losses], reduce=reduce)

    def _recalibrate_bn(self) -> None:
        """After the last epoch, recompute BN statistics if the model asks (`bn_recalibration_batches`,
        e.g. a depth-dynamic net with ``bn: recalibrate``): one forward per path (`calibration_forwards`)
        over the first batches of a fixed, augmented epoch order."""
        batches = self.student.bn_recalibration_batches if isinstance(self.student, MultiPathNet) else 0
        if not batches:
            return
        from kdforge.engine.bn_recalibration import recalibrate_bn

        forwards = self.student.calibration_forwards()
        self.train_loader.set_epoch(self.cfg.schedule.epochs)
        images = (batch[0] for _, batch in zip(range(batches), self.train_loader))
        with self.precision.autocast():
            used = recalibrate_bn(self.student, images, forwards)
        self.dist.broadcast_buffers(self.student)  # the statistics of rank 0's share
        if self.cfg.train.progress:
            print(f"BN statistics recalibrated over {used} training batches", flush=True)

    def _drop_pretrain_only_taps(self) -> None:
        """After the stages before training, tap (and run the teacher) only for weighted methods."""
        student_taps = self.losses.taps("student", training_only=True)
        teacher_taps = self.losses.taps("teacher", training_only=True)
        if student_taps != self.losses.student_taps:
            self.student_taps.remove()
            # a compiled graph keeps the hooks it was traced with: compile again for the new taps
            runner = torch.compile(self.student) if self.cfg.train.compile else None
            self.student_taps = FeatureTaps(self.student, student_taps, runner=runner)
        if self.use_teacher and not any(m.needs_teacher for m in self.losses.active(training_only=True)):
            self.teacher_taps.remove()
            self.use_teacher = False
        elif self.use_teacher and teacher_taps != self.losses.teacher_taps:
            self.teacher_taps.remove()
            self.teacher_taps = FeatureTaps(self.teacher, teacher_taps)
        if self.teacher_cache is not None:  # serve exactly the taps the teacher would now give
            if self.use_teacher:
                self.teacher_cache.keep(str(t) for t in self.teacher_taps.taps)
            else:
                self.teacher_cache = None

    def _max_steps_reached(self) -> bool:
        limit = self.cfg.train.max_steps
        return limit is not None and self.state.step >= limit

    def _train_epoch(self, logger: RunLogger, bar) -> dict[str, Any]:
        self.student.train()
        self.train_loader.set_epoch(self.state.epoch, start_batch=self.state.batch_in_epoch)
        device = self.precision.device
        tally = EpochTally.restore(self.state.epoch_partial, device, self.dist)  # a mid-epoch checkpoint's sums, or new
        self.nonfinite.skipped = (self.state.epoch_partial or {}).get("skipped", 0)
        self.state.epoch_partial = None
        log_every = max(1, self.cfg.train.log_every)
        every = self.cfg.train.checkpoint_every_steps
        steps = len(self.train_loader)
        window_start, window_images = time.perf_counter(), 0
        tally.start_clock()
        has_labels = self.train_data.has_labels
        for images, labels, indices in self.train_loader:
            losses, values, logits, applied = self._step(images, labels if has_labels else None, indices)
            if applied:
                tally.add(list(losses), values, logits, labels if has_labels else None)
            window_images += labels.shape[0]
            self.state.step += 1
            self.state.batch_in_epoch += 1
            bar.update(1)
            if self.state.step % log_every == 0:
                now = time.perf_counter()
                row = dict(zip(losses, (self.dist.all_reduce_sum(values) / self.dist.world_size).tolist()))  # one sync
                self.nonfinite.check(self.state.epoch)
                row["loss"] = sum(row.values())
                row.update(step=self.state.step, lr=self._lr_used,
                           epoch=self.state.epoch + self.state.batch_in_epoch / steps,
                           img_per_s=window_images * self.dist.world_size / max(now - window_start, 1e-9))
                logger.log("step", row, step=self.state.step)
                bar.set_postfix_str(f"ep {self.state.epoch + 1} loss {row['loss']:.3f} "
                                    f"{row['img_per_s']:.0f} img/s{self._eval_postfix}", refresh=False)
                window_start, window_images = now, 0
            if self._max_steps_reached():
                break
            inside = self.state.batch_in_epoch < steps  # the epoch's end saves anyway
            if inside and self._stop_requested(at_sync_point=self.state.step % log_every == 0):
                self._save_mid_epoch(tally)
                self._stop()
            if inside and every and self.state.step % every == 0:
                self._save_mid_epoch(tally)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # count the queued work in this epoch's time
        names, means, correct, seen, duration = tally.totals(self.dist)
        record = {f"train_{name}": value for name, value in zip(names, means)}
        record["train_loss"] = sum(record.values())
        record["train_top1"] = 100.0 * correct / max(seen, 1) if has_labels else None  # label-free
        record["lr"] = self._lr_used
        record["train_img_per_s"] = seen / max(duration, 1e-9)
        if self.nonfinite.skipped:
            record["skipped_steps"] = self.nonfinite.skipped
        self.state.skipped_steps += self.nonfinite.skipped
        self.nonfinite.skipped = 0
        self.state.train_images += seen
        self.state.train_time_s += duration
        return record

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None,
                indices: torch.Tensor | None = None) -> StepOutputs:
        """Teacher (no grad) and student forward with taps; call inside `precision.autocast()`.

        With a teacher cache and the batch's training-set `indices`, the teacher's outputs are looked up."""
        views = self.losses.extra_views(images, self.normalization)
        n = images.shape[0]
        if views:  # one forward of the batch and the methods' extra images (BatchNorm sees them together)
            images = torch.cat([images, *views.values()])
        t_logits, t_feats = None, {}
        if self.use_teacher:
            if self.teacher_cache is not None and indices is not None:
                t_logits, t_feats = self.teacher_cache.lookup(indices)
                if views:  # the cache holds the batch's own images; the teacher (eval mode) runs on the rest
                    with torch.no_grad():
                        v_logits, v_feats = self.teacher_taps(images[n:])
                    t_logits = torch.cat([t_logits, v_logits])
                    t_feats = {k: torch.cat([t_feats[k], v_feats[k]]) for k in t_feats}
            else:
                with torch.no_grad():
                    t_logits, t_feats = self.teacher_taps(images)
        s_logits, s_feats = self.student_taps(images)
        if not views:
            return StepOutputs(images, labels, s_logits, t_logits, s_feats, t_feats, self.student, self.teacher,
                               self.state.epoch, self.state.step, indices, len(self.train_data))

        def part(start: int, end: int, labels_: torch.Tensor | None, indices_: torch.Tensor | None) -> StepOutputs:
            return StepOutputs(images[start:end], labels_, s_logits[start:end],
                               None if t_logits is None else t_logits[start:end],
                               {k: v[start:end] for k, v in s_feats.items()},
                               {k: v[start:end] for k, v in t_feats.items()}, self.student, self.teacher,
                               self.state.epoch, self.state.step, indices_, len(self.train_data))

        out, start = part(0, n, labels, indices), n
        for key, extra in views.items():
            out.views[key] = part(start, start + extra.shape[0], None, None)
            start += extra.shape[0]
        return out

    def _forward_and_losses(self, images: torch.Tensor, labels: torch.Tensor | None,
                            indices: torch.Tensor | None):
        """One step's forward: (named losses, student logits); what DDP wraps in a distributed run."""
        out = self.forward(images, labels, indices)
        return self.losses(out), out.student_logits

    def _step(self, images: torch.Tensor, labels: torch.Tensor | None,
              indices: torch.Tensor | None = None) -> StepResult:
        """Forward, backward and update."""
        with self.precision.autocast():
            losses, logits = (self._ddp or self._forward_and_losses)(images, labels, indices)
        values = torch.stack([v.detach().float() for v in losses.values()])
        applied = self.nonfinite.observe(list(losses), values, self.state.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        if applied and self._dot_task_keys is not None:
            self._dot_update(losses)
        elif applied:
            total = functools.reduce(operator.add, losses.values())
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self._lr_used = self.optimizer.param_groups[0]["lr"]  # the rate this step used, for the logs
        self.scheduler.step()
        return StepResult(losses, values, logits, applied)

    def _dot_task_terms(self) -> set[str]:
        """The loss keys DOT treats as the task (the `ce` terms); errors for a run DOT cannot train."""
        where = "optim.name: dot"
        if self.precision.name == "fp16":
            raise ConfigError(f"{where} does not support fp16 loss scaling (as its authors' code); use "
                              f"train.precision: bf16 or fp32")
        active = {key for key, weight in self.losses.weights.items() if weight != 0}
        task = {key for key in active if self.losses.methods[key].name == "ce"}
        if not task or not active - task:
            raise ConfigError(f"{where} needs a `ce` term and at least one distillation term of non-zero weight "
                              f"(losses: {', '.join(sorted(active)) or 'none'})")
        return task

    def _dot_update(self, losses: dict[str, torch.Tensor]) -> None:
        """DOT's step: the distillation terms' gradient, kept; then the task terms' gradient; one update."""
        is_task = [key.split("/", 1)[0] in self._dot_task_keys for key in losses]
        distill = functools.reduce(operator.add, [v for v, t in zip(losses.values(), is_task) if not t])
        task = functools.reduce(operator.add, [v for v, t in zip(losses.values(), is_task) if t])
        distill.backward(retain_graph=True)
        self.optimizer.keep_distillation_grads()
        self.optimizer.zero_grad(set_to_none=True)
        task.backward()
        self.optimizer.step()

    # ------------------------------------------------------------------ saving and stopping
    def _save_checkpoints(self, record: dict[str, Any]) -> None:
        in_epoch = self.state.epoch - 1 if self.state.batch_in_epoch == 0 else self.state.epoch  # 0-based
        self.nonfinite.check(in_epoch)  # a NaN since the last check: stop before saving anything
        top1 = record.get(self._selection_key)
        improved = top1 is not None and top1 > self.state.best_top1
        if improved:
            self.state.best_top1, self.state.best_epoch = top1, self.state.epoch
        if self.dist.is_main:
            ckpt_dir = self.run_dir / "checkpoints"
            atomic_save(self._checkpoint(with_optimizer=True), ckpt_dir / "last.pt")
            if improved:
                atomic_save(self._checkpoint(with_optimizer=False), ckpt_dir / "best.pt")

    @property
    def _selection_key(self) -> str:
        """The epoch record's metric that chooses best.pt: the validation hold-out's top-1 if there is one."""
        return "val_top1" if self.val_data is not None and len(self.val_data) > 0 else "eval_top1"

    def _save_mid_epoch(self, tally: EpochTally) -> None:
        """last.pt inside an epoch, with the epoch's running metrics so a resume continues them."""
        self.nonfinite.check(self.state.epoch)
        self.state.epoch_partial = {**tally.state(self.dist), "skipped": self.nonfinite.skipped}
        self.state.elapsed_s = self._elapsed()
        if self.dist.is_main:
            atomic_save(self._checkpoint(with_optimizer=True), self.run_dir / "checkpoints" / "last.pt")
        self.state.epoch_partial = None

    def _stage_stop_requested(self) -> int | None:
        """The signal that asked a pre-training stage to stop (every stage step is a sync point), or None."""
        return (self._signals.requested or signal.SIGTERM) if self._stop_requested(at_sync_point=True) else None

    def _stop_requested(self, at_sync_point: bool) -> bool:
        """A signal asked to stop. Alone: checked every step. Distributed: ranks agree at sync points only."""
        asked = self._signals.requested is not None
        if not self.dist.enabled:
            return asked
        return at_sync_point and self.dist.any(asked, self.precision.device)

    def _stop(self) -> None:
        import signal
        import sys

        signum = self._signals.requested or signal.SIGTERM
        message = (f"{signal.Signals(signum).name} received: stopped after step {self.state.step} and saved "
                   f"{self.run_dir / 'checkpoints' / 'last.pt'}; continue with --resume")
        if self.dist.is_main:
            print(message, file=sys.stderr, flush=True)
        raise RunInterrupted(signum, message)

    @staticmethod
    def _postfix(record: dict[str, Any]) -> str:
        """' | eval top1 X% (head Y ...)': the last evaluation, kept on the bar until the next one."""
        heads = " ".join(f"{key.rsplit('/', 1)[-1]} {value:.1f}" for key, value in record.items()
                         if key.startswith("eval_top1/"))  # methods' own heads, e.g. EKD's sub-nets
        return (f" | eval ep {record['epoch']:g} top1 {record.get('eval_top1', float('nan')):.1f}%"
                f"{' (' + heads + ')' if heads else ''}")

    # ------------------------------------------------------------------ results
    def _write_summary(self) -> dict[str, Any]:
        import json

        from kdforge.plots import plot_curves

        last = self.state.history[-1] if self.state.history else {}
        record = model_record_of(self.student)
        summary = {
            "name": self.cfg.name,
            "seed": self.cfg.seed,
            "student": record["name"] if record else type(self.student).__name__,
            "teacher": self.cfg.teacher.checkpoint if (self.cfg.teacher and self.teacher is not None) else None,
            "teacher_model": (model_record_of(self.teacher) or {}).get("name") if self.teacher is not None else None,
            "losses": dict(self.losses.weights),
            "dataset": self.train_data.name,
            "params": sum(p.numel() for p in self.student.parameters()),
            "macs": count_macs(self.student, self.train_data.image_size, self.train_data.in_channels),
            "image_size": self.train_data.image_size,
            "in_channels": self.train_data.in_channels,
            "num_classes": self.train_data.num_classes,
            # fewer than params where part of the network is frozen (NetGraft's grafted teacher)
            "trainable_params": sum(p.numel() for p in self.student.parameters() if p.requires_grad),
            "epochs": self.state.epoch + self.state.batch_in_epoch / max(len(self.train_loader), 1),
            "steps": self.state.step,
            "top1_last": last.get("eval_top1"),
            "top5_last": last.get("eval_top5"),
            "eval_loss_last": last.get("eval_loss"),
            # the eval split's top-1 of best.pt, the epoch the selection split chose
            "top1_best": self._eval_top1_at(self.state.best_epoch),
            "best_epoch": self.state.best_epoch or None,
            "selection_split": self.cfg.data.selection_split,
            "teacher_checkpoint": self.checkpoint_sources.get("teacher") if self.teacher is not None else None,
            "student_init": self.checkpoint_sources.get("student"),
            "train_images": len(self.train_data),
            # training images the updates saw, over all epochs (a dropped partial batch is not seen)
            "images_seen": self.state.train_images,
            "drop_last": self.cfg.data.drops_last_batch,
            "wall_time_s": round(self.state.elapsed_s, 3),
            "train_time_s": round(self.state.train_time_s, 3),  # training steps only (no evaluation, saving)
            "train_img_per_s": self.state.train_images / max(self.state.train_time_s, 1e-9),
            "ms_per_step": 1000.0 * self.state.train_time_s / max(self.state.step, 1),
            # what the methods train beside the student (connectors, embeddings, heads), left out of params
            "method_params": sum(p.numel() for m in self.losses.methods.values() for p in m.parameters()),
            "device": str(self.precision.device),
            "precision": self.precision.name,
            "channels_last": self.precision.channels_last,
            "teacher_cache": self.teacher_cache is not None,
            "skipped_steps": self.state.skipped_steps,  # non-finite losses skipped (train.nonfinite: skip)
            "processes": self.dist.world_size,
            "run_dir": str(self.run_dir),
        }
        if self.val_data is not None:
            summary.update(val_top1_last=last.get("val_top1"), val_images=len(self.val_data),
                           val_top1_best=self.state.best_top1 if self.state.best_epoch else None)
        heads = {key[len("eval_top1/"):]: value for key, value in last.items() if key.startswith("eval_top1/")}
        if heads:
            summary["heads_top1_last"] = heads
        if isinstance(self.student, MultiPathNet):  # a depth-dynamic net: every path's size, cost, top-1
            summary["paths"] = self._path_summary(heads, summary["top1_last"])
        if not self.dist.is_main:
            return summary
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.state.history:
            plot_curves([(self.cfg.name, self.state.history)], self.run_dir / "curves.png", title=self.cfg.name)
        return summary


    def _eval_top1_at(self, epoch: int) -> float | None:
        """The eval split's top-1 at the end of `epoch` (None before any evaluation)."""
        if not epoch:
            return None
        if self._selection_key == "eval_top1":
            return self.state.best_top1
        return next((r.get("eval_top1") for r in self.state.history if r.get("epoch") == epoch), None)

    def _path_summary(self, heads: dict[str, float], full_top1: float | None) -> dict[str, dict[str, Any]]:
        """{path: {top1_last, params, macs}} of a multi-path student; a path's top-1 is the head of that name."""
        data = self.train_data
        paths = self.student.path_complexity(data.image_size, data.in_channels)
        by_name = {key.rsplit("/", 1)[-1]: value for key, value in heads.items()}
        full = self.student.full_name
        return {name: {"top1_last": full_top1 if name == full else by_name.get(name), **cost}
                for name, cost in paths.items()}


def _differences(path: str, a: Any, b: Any) -> list[str]:
    """'key.path (old -> new)' for every leaf where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in _differences(f"{path}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [f"{path} ({a!r} -> {b!r})"]


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
