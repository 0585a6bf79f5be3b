"""Step records: every `train.log_every` steps, the mean of each loss value over ranks, the rate and the learning rate."""

from __future__ import annotations

import time

from kdforge.engine.hooks.base import Hook


class StepLogHook(Hook):
    """Writes a 'step' record (one device sync) and the progress bar's line every `log_every` steps; checks
    the non-finite guard there too. Images per second are over the steps since the last record."""

    name = "step_log"

    def __init__(self) -> None:
        self._window_start, self._window_images = 0.0, 0

    def before_epoch(self, trainer) -> None:
        self._window_start, self._window_images = time.perf_counter(), 0

    def after_step(self, trainer, result) -> None:
        self._window_images += result.logits.shape[0]
        state = trainer.state
        if state.step % trainer.log_every != 0:
            return
        now = time.perf_counter()
        dist = trainer.dist
        row = dict(zip(result.loss_values, (dist.all_reduce_sum(result.detached) / dist.world_size).tolist()))  # one sync
        trainer.nonfinite.check(state.epoch)
        row["loss"] = sum(row.values())
        row.update(step=state.step, lr=trainer.lr_used,
                   epoch=state.epoch + state.batch_in_epoch / len(trainer.train_loader),
                   img_per_s=self._window_images * dist.world_size / max(now - self._window_start, 1e-9))
        trainer.logger.log("step", row, step=state.step)
        trainer.bar.set_postfix_str(f"ep {state.epoch + 1} loss {row['loss']:.3f} "
                                    f"{row['img_per_s']:.0f} img/s{trainer.eval_postfix}", refresh=False)
        self._window_start, self._window_images = now, 0
