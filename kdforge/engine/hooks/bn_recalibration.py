"""BatchNorm recalibration after the last epoch, for a student that asks (a depth-dynamic net, `bn: recalibrate`)."""

from __future__ import annotations

from typing import Any

from kdforge.engine import bn_recalibration
from kdforge.engine.hooks.base import Hook
from kdforge.models.capabilities import MultiPathNet


class BNRecalibrationHook(Hook):
    """After the last epoch and before its evaluation: recompute BN statistics if the model asks
    (`bn_recalibration_batches`): one forward per path (`calibration_forwards`) over the first batches of a
    fixed, augmented epoch order."""

    name = "bn_recalibration"

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        epochs = trainer.cfg.schedule.epochs
        if not trainer.epoch_finished or trainer.state.epoch != epochs:
            return
        student = trainer.student
        batches = student.bn_recalibration_batches if isinstance(student, MultiPathNet) else 0
        if not batches:
            return
        forwards = student.calibration_forwards()
        trainer.train_loader.set_epoch(epochs)
        images = (batch[0] for _, batch in zip(range(batches), trainer.train_loader))
        with trainer.precision.autocast():
            used = bn_recalibration.recalibrate_bn(student, images, forwards)
        trainer.dist.broadcast_buffers(student)  # the statistics of rank 0's share
        if trainer.cfg.train.progress:
            print(f"BN statistics recalibrated over {used} training batches", flush=True)
