"""Quantisation-aware training as a loop hook (`train.quantize`; the machinery in `engine/quantize.py`).

Before epoch `start_epoch` (counting from 0) the student is swapped for its QAT-prepared graph: the same parameters
(the optimizer's state carries over), fake quantisation of weights and activations, BN folded; the methods'
student taps are re-made on the graph. From then on the fake quantisers' observers update their ranges while the
student trains and hold them still while it is evaluated and saved (so evaluation measures the int8 model the
training reached, and a checkpoint holds the ranges as they stand). `--resume` from a checkpoint saved after the
switch makes the switch again before the weights load (`before_resume`).
"""

from __future__ import annotations

from typing import Any

from kdforge.engine.hooks.base import Hook


def quantize_hooks(cfg) -> list[Hook]:
    """The hook of the run's `train.quantize` (none without it)."""
    return [QuantizeHook()] if cfg.train.quantize is not None else []


class QuantizeHook(Hook):
    name = "quantize"

    def __init__(self):
        self.active = False  # the student is the QAT-prepared graph

    def before_epoch(self, trainer) -> None:
        if not self.active and trainer.state.epoch >= trainer.cfg.train.quantize.start_epoch:
            switch_to_qat(trainer)
            self.active = True
        if self.active:
            from kdforge.engine.quantize import set_observers

            set_observers(trainer.student, True)

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        if self.active:  # before evaluation and the checkpoint: ranges held still
            from kdforge.engine.quantize import set_observers

            set_observers(trainer.student, False)
        record["fake_quant"] = int(self.active)

    def before_resume(self, trainer, state: dict[str, Any]) -> None:
        if state.get("active") and not self.active:
            switch_to_qat(trainer)
            self.active = True

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = bool(state.get("active", self.active))


def switch_to_qat(trainer) -> None:
    """Swap `trainer.student` for its QAT-prepared graph, with the methods' student taps on it."""
    from kdforge.engine.quantize import example_images, prepare_qat, with_tap_points
    from kdforge.features import FeatureTaps

    q = trainer.cfg.train.quantize
    data = trainer.train_data
    device = next(trainer.student.parameters()).device
    example = example_images(data.in_channels, data.image_size, device)
    taps = [str(t) for t in trainer.student_taps.taps]
    trainer.student_taps.remove()
    prepared = with_tap_points(prepare_qat(trainer.student, q.backend, example), taps)
    trainer.student = prepared.to(device)
    trainer.student_taps = FeatureTaps(prepared, taps, role="student")
    if trainer.cfg.train.progress:
        print(f"epoch {trainer.state.epoch}: the student trains with fake int8 quantisation from now on "
              f"({q.backend} backend)", flush=True)
