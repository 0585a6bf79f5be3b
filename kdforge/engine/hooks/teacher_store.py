"""The study-wide teacher logit store as a loop hook (`train.teacher_store`; `engine/teacher_store.py`): each epoch
starts by loading the stored logits (or beginning to record them) and ends by writing a recorded, whole epoch."""

from __future__ import annotations

from typing import Any

from kdforge.engine.hooks.base import Hook


class TeacherStoreHook(Hook):
    name = "teacher_store"

    def before_epoch(self, trainer) -> None:
        store = trainer.teacher_store
        if store is None:
            return
        loader = trainer.train_loader
        order = loader.epoch_indices(trainer.state.epoch)
        visited = order[: len(loader) * loader.batch_size]  # without the partial batch drop_last leaves out
        store.start_epoch(trainer.state.epoch, visited, first_batch=trainer.state.batch_in_epoch)

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        if trainer.teacher_store is not None:
            store = trainer.teacher_store
            record["teacher_store"] = "served" if store.serving else "recorded"
            store.finish_epoch(trainer.epoch_finished)
