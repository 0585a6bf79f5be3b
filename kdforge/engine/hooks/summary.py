"""The run's summary (summary.json) and its curves (curves.png), written when training ends."""

from __future__ import annotations

import json
import sys
from typing import Any

from kdforge.engine.hooks.base import Hook
from kdforge.models.capabilities import MultiPathNet, model_record_of
from kdforge.models.complexity import count_macs


class SummaryHook(Hook):
    """After the last epoch: `trainer.summary` (what `fit` returns), written by rank 0. Before the first, a
    teacher file that states its top-1 is measured on the eval split (`check_stated_teacher`)."""

    name = "summary"

    def before_train(self, trainer) -> None:
        check_stated_teacher(trainer)

    def after_train(self, trainer) -> None:
        trainer.summary = write_summary(trainer)


def check_stated_teacher(trainer) -> None:
    """A teacher file that states its top-1 (RepDistiller's / mdistiller's `accuracy`): its top-1 on the eval
    split goes beside it in the summary's `teacher_checkpoint` (`measured_top1`, `measured_on`), with one
    warning line if they lie more than a point apart (another data set, normalisation or model)."""
    from kdforge.engine.evaluate import evaluate
    from kdforge.engine.weights_file import stated_accuracy_warning

    source = trainer.checkpoint_sources.get("teacher") or {}
    loader = dict(getattr(trainer, "eval_sets", [])).get("eval")
    d = trainer.cfg.data
    few_shot_holdout = d.few_shot is not None and d.few_shot.holdout  # training images: not what the file states
    if source.get("stated_accuracy") is None or not trainer.use_teacher or loader is None or few_shot_holdout:
        return
    measured = evaluate(trainer.teacher, loader, trainer.precision, reduce=trainer.dist.all_reduce_sum)["top1"]
    where = f"{d.name}/{d.eval_split}"
    source.update(measured_top1=measured, measured_on=where)
    warning = stated_accuracy_warning(source["file"], source["stated_accuracy"], measured, where)
    if warning and trainer.dist.is_main:
        print(warning, file=sys.stderr, flush=True)


def write_summary(trainer) -> dict[str, Any]:
    """The run's summary; rank 0 also writes summary.json and curves.png."""
    from kdforge.plots import plot_curves

    last = trainer.state.history[-1] if trainer.state.history else {}
    record = model_record_of(trainer.student)
    summary = {
        "name": trainer.cfg.name,
        "seed": trainer.cfg.seed,
        "student": record["name"] if record else type(trainer.student).__name__,
        "teacher": trainer.cfg.teacher.checkpoint if (trainer.cfg.teacher and trainer.teacher is not None) else None,
        "teacher_model": (model_record_of(trainer.teacher) or {}).get("name") if trainer.teacher is not None else None,
        "losses": dict(trainer.losses.weights),
        "dataset": trainer.train_data.name,
        "params": sum(p.numel() for p in trainer.student.parameters()),
        "macs": count_macs(trainer.student, trainer.train_data.image_size, trainer.train_data.in_channels),
        "image_size": trainer.train_data.image_size,
        "in_channels": trainer.train_data.in_channels,
        "num_classes": trainer.train_data.num_classes,
        # fewer than params where part of the network is frozen (NetGraft's grafted teacher)
        "trainable_params": sum(p.numel() for p in trainer.student.parameters() if p.requires_grad),
        "epochs": trainer.state.epoch + trainer.state.batch_in_epoch / max(len(trainer.train_loader), 1),
        "steps": trainer.state.step,
        "top1_last": last.get("eval_top1"),
        "top5_last": last.get("eval_top5"),
        "eval_loss_last": last.get("eval_loss"),
        # the eval split's top-1 of best.pt, the epoch the selection split chose
        "top1_best": eval_top1_at(trainer, trainer.state.best_epoch),
        "best_epoch": trainer.state.best_epoch or None,
        "selection_split": trainer.cfg.data.selection_split,
        "teacher_checkpoint": trainer.checkpoint_sources.get("teacher") if trainer.teacher is not None else None,
        "student_init": trainer.checkpoint_sources.get("student"),
        "train_images": len(trainer.train_data),
        # training images the updates saw, over all epochs (a dropped partial batch is not seen)
        "images_seen": trainer.state.train_images,
        "drop_last": trainer.cfg.data.drops_last_batch,
        "wall_time_s": round(trainer.state.elapsed_s, 3),
        "train_time_s": round(trainer.state.train_time_s, 3),  # training steps only (no evaluation, saving)
        "train_img_per_s": trainer.state.train_images / max(trainer.state.train_time_s, 1e-9),
        "ms_per_step": 1000.0 * trainer.state.train_time_s / max(trainer.state.step, 1),
        # what the methods train beside the student (connectors, embeddings, heads), left out of params
        "method_params": sum(p.numel() for m in trainer.losses.methods.values() for p in m.parameters()),
        "device": str(trainer.precision.device),
        "precision": trainer.precision.name,
        "channels_last": trainer.precision.channels_last,
        "teacher_cache": trainer.teacher_cache is not None,
        "teacher_store": teacher_store_summary(trainer),
        "skipped_steps": trainer.state.skipped_steps,  # non-finite losses skipped (train.nonfinite: skip)
        "processes": trainer.dist.world_size,
        "run_dir": str(trainer.run_dir),
    }
    bad = skipped_files(trainer)  # every process takes part (a gather)
    if bad is not None:
        summary["skipped_files"] = {"count": len(bad), "files": bad}
    if trainer.val_data is not None:
        summary.update(val_top1_last=last.get("val_top1"), val_images=len(trainer.val_data),
                       val_top1_best=trainer.state.best_top1 if trainer.state.best_epoch else None)
    heads = {key[len("eval_top1/"):]: value for key, value in last.items() if key.startswith("eval_top1/")}
    if heads:
        summary["heads_top1_last"] = heads
    if isinstance(trainer.student, MultiPathNet):  # a depth-dynamic net: every path's size, cost, top-1
        summary["paths"] = path_summary(trainer, heads, summary["top1_last"])
    if not trainer.dist.is_main:
        return summary
    (trainer.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if trainer.state.history:
        plot_curves([(trainer.cfg.name, trainer.state.history)], trainer.run_dir / "curves.png", title=trainer.cfg.name)
    return summary


def skipped_files(trainer, gather: bool = True) -> dict[str, str] | None:
    """{path: reason} of the unreadable files skipped under data.skip_bad_files: those saved before a resume and
    those this run's streaming loaders met, over every process (`gather`, a collective); None when not skipping."""
    if not trainer.cfg.data.skip_bad_files and not trainer.state.skipped_files:
        return None
    loaders = [getattr(trainer, "train_loader", None), *(loader for _, loader in getattr(trainer, "eval_sets", []))]
    found = dict(trainer.state.skipped_files)
    for loader in loaders:
        found.update(getattr(loader, "bad_files", {}))
    if gather and trainer.dist.enabled:
        import torch.distributed as dist

        every: list = [None] * trainer.dist.world_size
        dist.all_gather_object(every, found)
        found = {path: reason for part in every for path, reason in part.items()}
    return dict(sorted(found.items()))


def eval_top1_at(trainer, epoch: int) -> float | None:
    """The eval split's top-1 at the end of `epoch` (None before any evaluation)."""
    if not epoch:
        return None
    if trainer.selection_key == "eval_top1":
        return trainer.state.best_top1
    return next((r.get("eval_top1") for r in trainer.state.history if r.get("epoch") == epoch), None)


def path_summary(trainer, heads: dict[str, float], full_top1: float | None) -> dict[str, dict[str, Any]]:
    """{path: {top1_last, params, macs}} of a multi-path student; a path's top-1 is the head of that name."""
    data = trainer.train_data
    paths = trainer.student.path_complexity(data.image_size, data.in_channels)
    by_name = {key.rsplit("/", 1)[-1]: value for key, value in heads.items()}
    full = trainer.student.full_name
    return {name: {"top1_last": full_top1 if name == full else by_name.get(name), **cost}
            for name, cost in paths.items()}


def teacher_store_summary(trainer) -> dict[str, Any] | None:
    """The study's teacher store as this run used it (None: the run set no `train.teacher_store`)."""
    if getattr(trainer, "teacher_store", None) is not None:
        return {"used": True, **trainer.teacher_store.describe()}
    reason = getattr(trainer, "teacher_store_unused", None)
    return None if reason is None else {"used": False, "reason": reason}
