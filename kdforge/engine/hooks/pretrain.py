"""The stages some methods run before training (AB's initialisation, FT's paraphraser, SSKD's rotation head).

A method with a stage adds a `PretrainStageHook` to the loop (`Method.loop_hooks`); the loop's own
`AfterPretrainHook`, after every method's hooks, then keeps only the taps the weighted losses need.
"""

from __future__ import annotations

import signal
import sys

import torch

from kdforge.engine.hooks.base import Hook
from kdforge.engine.interrupts import RunInterrupted, StopSignals
from kdforge.engine.pretrain import run_pretrain_stage
from kdforge.features import FeatureTaps


class PretrainStageHook(Hook):
    """Before the first training step of a new run (not on a resume): the stage of the loss `key`'s method
    (`engine/pretrain.py`); it runs even at weight 0 (AB: initialisation only)."""

    def __init__(self, key: str, method):
        self.key, self.method = key, method
        self.name = f"pretrain/{key}"

    def before_train(self, trainer) -> None:
        if trainer.state.step == 0:
            with StopSignals() as trainer.signals:
                try:
                    self.run_stage(trainer)
                except RunInterrupted as exc:
                    if trainer.dist.is_main:
                        print(exc, file=sys.stderr, flush=True)
                    raise

    def run_stage(self, trainer) -> None:
        def stop_requested() -> int | None:  # every stage step is a sync point
            return (trainer.signals.requested or signal.SIGTERM) if trainer.stop_requested(at_sync_point=True) else None

        run_pretrain_stage(self.key, self.method, trainer.student, trainer.forward, trainer.train_loader,
                           trainer.cfg.optim, trainer.precision, trainer.dist, trainer.logger, stop_requested)


class AfterPretrainHook(Hook):
    """After the stages (on a resumed run too): the taps only the stages needed are removed, and the
    teacher is no longer run if no weighted loss needs it."""

    name = "after_pretrain"

    def before_train(self, trainer) -> None:
        drop_pretrain_only_taps(trainer)


def drop_pretrain_only_taps(trainer) -> None:
    """After the stages before training, tap (and run the teacher) only for weighted losses."""
    losses = trainer.losses
    student_taps = losses.taps("student", training_only=True)
    teacher_taps = losses.taps("teacher", training_only=True)
    if student_taps != losses.student_taps:
        trainer.student_taps.remove()
        # a compiled graph keeps the hooks it was traced with: compile again for the new taps
        runner = torch.compile(trainer.student) if trainer.cfg.train.compile else None
        trainer.student_taps = FeatureTaps(trainer.student, student_taps, runner=runner)
    if trainer.use_teacher and not any(m.needs_teacher for m in losses.active(training_only=True)):
        trainer.teacher_taps.remove()
        trainer.use_teacher = False
    elif trainer.use_teacher and teacher_taps != losses.teacher_taps:
        trainer.teacher_taps.remove()
        trainer.teacher_taps = FeatureTaps(trainer.teacher, teacher_taps)
    if trainer.teacher_cache is not None:  # serve exactly the taps the teacher would now give
        if trainer.use_teacher:
            trainer.teacher_cache.keep(str(t) for t in trainer.teacher_taps.taps)
        else:
            trainer.teacher_cache = None
