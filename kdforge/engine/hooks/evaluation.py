"""Evaluation at the end of an epoch: every `train.eval_every` epochs and when the run stops."""

from __future__ import annotations

from typing import Any

import torch

from kdforge.engine.evaluate import evaluate
from kdforge.engine.hooks.base import Hook
from kdforge.methods.base import StepOutputs


class EvalHeadsHook(Hook):
    """A method's own classifier heads (EKD's sub-nets, SFTN's branches), added to the loop by the method
    (`Method.loop_hooks`): the evaluation reports the top-1 of each as `<prefix>_top1/<key>/<head>`."""

    def __init__(self, key: str, method):
        self.key, self.method = key, method
        self.name = f"eval_heads/{key}"

    def heads(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        return {f"{self.key}/{name}": z for name, z in self.method.eval_heads(out).items()}


class EvaluationHook(Hook):
    """Adds `eval_*` (and `val_*` for a validation hold-out) metrics to the epoch record, with the top-1
    of the heads methods add (`EvalHeadsHook`), and shows them on the progress bar."""

    name = "evaluation"

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        due = trainer.epoch_finished and trainer.state.epoch % trainer.cfg.train.eval_every == 0
        if not trainer.eval_sets or not (due or trainer.stopping()):
            return
        for prefix, loader in trainer.eval_sets:
            metrics = evaluate_student(trainer, loader)
            record.update({f"{prefix}_{k}": v for k, v in metrics.items() if k != "n"})
        trainer.eval_postfix = postfix(record)
        trainer.bar.set_postfix_str(trainer.eval_postfix.removeprefix(" | "), refresh=False)


def evaluate_student(trainer, loader) -> dict[str, Any]:
    """The trained network's metrics on `loader`, and the top-1 of methods' own heads (e.g. SFTN's branches)."""
    with_heads = trainer.hooks.of_type(EvalHeadsHook)
    trainer.dist.broadcast_buffers(trainer.student)  # every rank evaluates rank 0's model (BN statistics)
    reduce = trainer.dist.all_reduce_sum
    if not with_heads:
        return evaluate(trainer.student, loader, trainer.precision, reduce=reduce)

    def heads(images: torch.Tensor, labels: torch.Tensor):
        logits, feats = trainer.student_taps(images)
        out = StepOutputs(images, labels, logits, student_features=feats, student=trainer.student,
                          epoch=trainer.state.epoch, step=trainer.state.step)
        return logits, {name: z for hook in with_heads for name, z in hook.heads(out).items()}

    return evaluate(trainer.student, loader, trainer.precision, heads=heads, also_eval=[trainer.losses],
                    reduce=reduce)


def postfix(record: dict[str, Any]) -> str:
    """' | eval top1 X% (head Y ...)': the last evaluation, kept on the bar until the next one."""
    heads = " ".join(f"{key.rsplit('/', 1)[-1]} {value:.1f}" for key, value in record.items()
                     if key.startswith("eval_top1/"))  # methods' own heads, e.g. EKD's sub-nets
    return (f" | eval ep {record['epoch']:g} top1 {record.get('eval_top1', float('nan')):.1f}%"
            f"{' (' + heads + ')' if heads else ''}")
