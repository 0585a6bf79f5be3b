"""The loop's hook protocol: what runs before and after training, each epoch and each step.

The loop (`engine/trainer.py`) trains; evaluation, checkpoints, logging, BN recalibration, the stages
before training and the summary are hooks of their own files, called in a fixed order. A method that
needs the loop adds hooks of its own (`Method.loop_hooks`: a stage before training, evaluation heads). A hook with
state returns it from `state_dict`; the checkpoint saves every hook's state under its `name` and
`--resume` gives it back, so a resumed run continues exactly (the loop's own counters are in
`TrainState`). Written after the idea of detectron2's `HookBase`, our own code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdforge.engine.state import StepResult
    from kdforge.engine.trainer import Trainer


class Hook:
    """Override what a hook needs; every method gets the trainer (its state, config, models, logger).

    - `before_train`: once per `fit`, before the first step (after a resume's state is loaded).
    - `before_epoch` / `after_epoch(record)`: around each (rest of an) epoch; `record` is the epoch's
      log record, which hooks before the epoch-record hook may add to.
    - `after_step(result)`: after each optimizer step (`trainer.state.step` already counts it).
    - `after_train`: once, after the last epoch (not after an interrupted run).
    - `state_dict` / `load_state_dict`: what must survive a kill and `--resume`.
    - `before_resume(checkpoint)`: `--resume` calls it before any weights load, with the hook's saved state: a
      hook that changed the student's structure (quantisation-aware training) repeats the change here.
    """

    #: the key of this hook's state in checkpoints; unique within a run
    name: str = ""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_epoch(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        pass

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def before_resume(self, trainer: Trainer, state: dict[str, Any]) -> None:
        pass


class Hooks:
    """Hooks in calling order, each event called on every hook in turn."""

    def __init__(self, hooks: Iterable[Hook]):
        self.hooks = list(hooks)
        names = [hook_name(h) for h in self.hooks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"hooks: each hook needs its own name, {', '.join(repeated)} repeat (set `name`)")

    def before_train(self, trainer: Trainer) -> None:
        for hook in self.hooks:
            hook.before_train(trainer)

    def before_epoch(self, trainer: Trainer) -> None:
        for hook in self.hooks:
            hook.before_epoch(trainer)

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        for hook in self.hooks:
            hook.after_step(trainer, result)

    def after_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.after_epoch(trainer, record)

    def after_train(self, trainer: Trainer) -> None:
        for hook in self.hooks:
            hook.after_train(trainer)

    def of_type(self, kind: type) -> list:
        """The hooks that are instances of `kind`, in calling order."""
        return [h for h in self.hooks if isinstance(h, kind)]

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """{hook name: its state} of the hooks that keep any."""
        return {hook_name(h): state for h in self.hooks if (state := h.state_dict())}

    def before_resume(self, trainer: Trainer, states: dict[str, dict[str, Any]]) -> None:
        """Each hook's `before_resume` with its saved state ({} if it saved none)."""
        for hook in self.hooks:
            hook.before_resume(trainer, states.get(hook_name(hook), {}))

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        """Give each hook its saved state (a hook absent from `states` had none to save)."""
        for hook in self.hooks:
            if hook_name(hook) in states:
                hook.load_state_dict(states[hook_name(hook)])


def hook_name(hook: Hook) -> str:
    return hook.name or type(hook).__name__
