"""The epoch record: its wall time, the run's history and the 'epoch' line of the log."""

from __future__ import annotations

from typing import Any

from kdforge.engine.hooks.base import Hook


class EpochRecordHook(Hook):
    """Stamps the record with the run's elapsed time, appends it to `state.history` and logs it. Hooks
    before this one may add to the record; the checkpoint after it saves the history with it."""

    name = "epoch_record"

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        trainer.state.elapsed_s = trainer.elapsed()
        record["elapsed_s"] = round(trainer.state.elapsed_s, 3)
        trainer.state.history.append(record)
        trainer.logger.log("epoch", record, step=trainer.state.step)
