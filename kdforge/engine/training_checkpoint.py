"""What a run's `last.pt` / `best.pt` hold, and `--resume` from them (the file format: `checkpoint.py`)."""

from __future__ import annotations

from typing import Any

from kdforge.config import RESUMABLE_CHANGES, TRAJECTORY_KEYS, config_to_dict, with_current_defaults
from kdforge.engine.checkpoint import FORMAT, load_checkpoint, load_weights
from kdforge.engine.logger import truncate_log
from kdforge.engine.quantize import quantize_record
from kdforge.engine.seeding import restore_rng_state, rng_state
from kdforge.engine.state import TrainState
from kdforge.errors import CheckpointError, ConfigError
from kdforge.models.capabilities import model_record_of


def checkpoint_of(trainer, with_optimizer: bool = True) -> dict[str, Any]:
    """The student, the methods' modules, the loop's state, the hooks' states, the config and the data's
    description; with the optimizer, scheduler, loss scaler and RNG states (`last.pt`) for an exact resume."""
    data = trainer.train_data
    ckpt = {
        "format": FORMAT,
        "model": model_record_of(trainer.student),
        "student": trainer.student.state_dict(),
        "quantize": quantize_record(trainer.student),  # a QAT student's state dict fits its prepared graph
        "losses": trainer.losses.state_dict(),
        "state": vars(trainer.state).copy(),
        "hooks": trainer.hooks.state_dict(),
        "config": config_to_dict(trainer.cfg),
        # how best.pt is chosen: the metric, on which split (read by `checkpoint_source`)
        "selection": {"split": trainer.cfg.data.selection_split, "metric": trainer.selection_key},
        "data": {"name": data.name, "classes": list(data.classes), "mean": list(data.mean),
                 "std": list(data.std), "image_size": data.image_size, "in_channels": data.in_channels},
    }
    if with_optimizer:
        ckpt.update(optimizer=trainer.optimizer.state_dict(), scheduler=trainer.scheduler.state_dict(),
                    scaler=trainer.scaler.state_dict(), rng=rng_state())
    return ckpt


def resume(trainer) -> None:
    """Load the run folder's `last.pt` into a prepared trainer: weights, optimizer, schedule, RNG, the loop's
    and the hooks' states; the log is cut back to the checkpoint's step. The config must not have changed."""
    # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
    ckpt = load_checkpoint(trainer.run_dir, "last", map_location="cpu")
    check_same_config(config_to_dict(trainer.cfg), ckpt["config"], ckpt["path"])
    trainer.hooks.before_resume(trainer, ckpt.get("hooks", {}))  # e.g. the student switched to QAT before the save
    try:
        load_weights(trainer.student, ckpt["student"], ckpt["path"])
        trainer.losses.load_state_dict(ckpt["losses"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.scheduler.load_state_dict(ckpt["scheduler"])
        trainer.scaler.load_state_dict(ckpt["scaler"])
        trainer.hooks.load_state_dict(ckpt.get("hooks", {}))  # checkpoints before the hooks had none
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot resume from {ckpt['path']}: {exc}") from None
    restore_rng_state(ckpt["rng"])
    trainer.state = TrainState(**ckpt["state"])
    if trainer.dist.is_main:
        truncate_log(trainer.run_dir, trainer.state.step)  # drop records written after this checkpoint


def check_same_config(now: dict[str, Any], saved: dict[str, Any], path: str) -> None:
    """ConfigError naming every trajectory key (`config.TRAJECTORY_KEYS`) that differs from the saved run."""
    saved = with_current_defaults(saved)  # keys added to kdforge since that run was saved: their defaults
    changed = []
    for key in TRAJECTORY_KEYS:
        a, b = saved, now
        for part in key.split("."):
            a, b = a.get(part), b.get(part)
        changed += differences(key, a, b)
    changed = [c for c in changed if c.split(" ")[0] not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(f"--resume: {'; '.join(changed)} differ from the run in {path}. A resumed run "
                          f"keeps its config; start a new run with --set name=NEW_NAME instead")


def differences(path: str, a: Any, b: Any) -> list[str]:
    """'key.path (old -> new)' for every leaf where two config dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in dict.fromkeys([*a, *b]) for d in differences(f"{path}.{k}", a.get(k), b.get(k))]
    return [] if a == b else [f"{path} ({a!r} -> {b!r})"]
