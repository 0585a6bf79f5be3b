"""Checkpoints: `last.pt` after every epoch (and every `train.checkpoint_every_steps` steps inside one),
`best.pt` when the selection split's top-1 improves, and `last.pt` before stopping on SIGTERM / Ctrl-C."""

from __future__ import annotations

from typing import Any

from kdforge.engine.checkpoint import atomic_save
from kdforge.engine.hooks.base import Hook


class CheckpointHook(Hook):
    """Saves after every other hook of the step or epoch has run, so the hooks' states it saves are current.

    Inside an epoch: a stop request saves `last.pt` with the epoch's running metrics and stops the run
    (`RunInterrupted`); so does every `checkpoint_every_steps`-th step without stopping. At an epoch's end:
    the non-finite guard is checked (a NaN since its last check stops the run before anything is saved),
    `best.pt` follows the selection split's top-1, `last.pt` is saved, then a stop request stops."""

    name = "checkpoints"

    def after_step(self, trainer, result) -> None:
        state = trainer.state
        if trainer.max_steps_reached():
            return  # the epoch's end saves
        inside = state.batch_in_epoch < len(trainer.train_loader)  # the epoch's end saves anyway
        if inside and trainer.stop_requested(at_sync_point=state.step % trainer.log_every == 0):
            save_mid_epoch(trainer)
            trainer.stop()
        every = trainer.cfg.train.checkpoint_every_steps
        if inside and every and state.step % every == 0:
            save_mid_epoch(trainer)

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        state = trainer.state
        in_epoch = state.epoch - 1 if state.batch_in_epoch == 0 else state.epoch  # 0-based
        trainer.nonfinite.check(in_epoch)  # a NaN since the last check: stop before saving anything
        top1 = record.get(trainer.selection_key)
        improved = top1 is not None and top1 > state.best_top1
        if improved:
            state.best_top1, state.best_epoch = top1, state.epoch
        note_skipped_files(trainer)
        if trainer.dist.is_main:
            ckpt_dir = trainer.run_dir / "checkpoints"
            atomic_save(trainer.checkpoint(with_optimizer=True), ckpt_dir / "last.pt")
            if improved:
                atomic_save(trainer.checkpoint(with_optimizer=False), ckpt_dir / "best.pt")
        if trainer.stop_requested(at_sync_point=True):
            trainer.stop()


def save_mid_epoch(trainer) -> None:
    """last.pt inside an epoch, with the epoch's running metrics so a resume continues them."""
    state = trainer.state
    trainer.nonfinite.check(state.epoch)
    state.epoch_partial = {**trainer.tally.state(trainer.dist), "skipped": trainer.nonfinite.skipped}
    state.elapsed_s = trainer.elapsed()
    note_skipped_files(trainer)
    if trainer.dist.is_main:
        atomic_save(trainer.checkpoint(with_optimizer=True), trainer.run_dir / "checkpoints" / "last.pt")
    state.epoch_partial = None


def note_skipped_files(trainer) -> None:
    """Every process's skipped files (data.skip_bad_files) into the state the checkpoint saves, so a resume keeps
    them; every rank calls it (a gather). A run resumed without skipping keeps what it had."""
    from kdforge.engine.hooks.summary import skipped_files

    found = skipped_files(trainer)
    if found is not None:
        trainer.state.skipped_files = found
