"""Atomic checkpoints and loading models back from them.

A checkpoint is written to a temporary file in the same folder, flushed to disk, and
renamed over the old one, so a crash mid-write never replaces a good checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.errors import CheckpointError
from kdforge.models.capabilities import model_record_of

FORMAT = "kdforge-checkpoint/1"


def first_line(exc: BaseException, limit: int) -> str:
    """The first line of `exc`'s message, stripped and cut to `limit` characters ('' for an empty message)."""
    return (str(exc).strip().splitlines() or [""])[0].strip()[:limit]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(temporary path)` in `path`'s folder, flushed to disk, then renamed over `path`: a crash
    leaves either the old file or the new one, never half of one (and a temporary that
    `remove_stale_temporaries` clears)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        _fsync(path.parent)
    except OSError:
        pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` through `atomic_write`."""
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    atomic_write(path, save)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the half-written files of saves that a killed process never finished."""
    folder = Path(folder)
    if folder.is_dir():
        for stale in folder.glob(".*.pt.tmp-*"):
            stale.unlink(missing_ok=True)


CHOICES = ("last", "best")


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file, or the `which` checkpoint of a run folder: `last` (the last epoch, the default)
    or `best` (chosen on the run's selection split; its last.pt if the run never evaluated)."""
    if which not in CHOICES:
        raise CheckpointError(f"which checkpoint: 'last' or 'best', got {which!r}")
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints"
        candidate = folder / f"{which}.pt"
        if which == "best" and not candidate.is_file():
            candidate = folder / "last.pt"
        if not candidate.is_file():
            missing = "checkpoints/last.pt is missing" if which == "last" else "neither best.pt nor last.pt"
            raise CheckpointError(f"run folder {path} has no checkpoints ({missing}): train it first, or give "
                                  f"a .pt file")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (give a .pt file or a run folder)")
    return path


def checkpoint_source(ckpt: dict) -> dict[str, Any]:
    """How a loaded checkpoint was chosen, for a run's summary: {file, which, selected_on}.

    `which` is 'last'/'best' for a run folder's files (None for another file); `selected_on` is the
    split that chose a best.pt (None for a last epoch: nothing was selected). A plain weight file that
    states its top-1 (a RepDistiller/mdistiller teacher) adds `stated_accuracy`."""
    file = Path(ckpt["path"])
    which = file.stem if file.parent.name == "checkpoints" and file.stem in CHOICES else None
    selected_on = None
    if which == "best":
        selected_on = (ckpt.get("selection") or {}).get("split") or _eval_split_of(ckpt)
    source = {"file": str(file), "which": which, "selected_on": selected_on,
              "epoch": (ckpt.get("state") or {}).get("epoch")}
    if ckpt.get("stated_accuracy") is not None:
        source["stated_accuracy"] = ckpt["stated_accuracy"]
    return source


def _eval_split_of(ckpt: dict) -> str | None:
    """The split that chose a best.pt written without a `selection` record (before checkpoints recorded
    it, or a slim export from before exports kept it): as `DataConfig.selection_split` decides it, from
    the run's config."""
    data = (ckpt.get("config") or {}).get("data") or {}
    if data.get("val_split") is not None:
        from kdforge.config import config_from_dict

        try:  # the same words a checkpoint with the record has
            return config_from_dict(ckpt["config"]).data.selection_split
        except Exception:  # a config this kdforge no longer reads: the split is still the validation hold-out
            return "val"
    if (data.get("few_shot") or {}).get("holdout"):
        return "few-shot hold-out"
    return data.get("eval_split")


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of one of its checkpoint files (a lone .pt file: its folder)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_checkpoint(path: str | Path, which: str = "last", map_location: str | torch.device = "cpu") -> dict:
    """Read a kdforge checkpoint; a clear error for a missing, truncated or foreign file."""
    from kdforge.engine.weights_file import is_kdforge_checkpoint, read_file

    file = resolve_checkpoint(path, which)
    ckpt = read_file(file, map_location)
    if not is_kdforge_checkpoint(ckpt):
        raise CheckpointError(f"{file} is not a kdforge checkpoint (no '{FORMAT}' marker)")
    ckpt["path"] = str(file)
    return ckpt


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load a state dict strictly; a mismatch is one CheckpointError line naming the first difference."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        own = model.state_dict()
        diffs = [f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} in the model"
                 for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
        diffs += [f"{k} is missing from the checkpoint" for k in own if k not in state]
        diffs += [f"{k} is in the checkpoint but not in the model" for k in state if k not in own]
        if diffs:
            what = diffs[0] + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else "")
        else:  # a failure of the model's own load hooks
            what = " ".join(str(exc).split())[:300]
        name = (model_record_of(model) or {}).get("name") or type(model).__name__
        raise CheckpointError(f"{source} does not fit the {name} built here: {what}; was it saved from another "
                              f"model, or with other options?") from None


def load_model(path: str | Path, which: str = "last", map_location: str | torch.device = "cpu"):
    """Rebuild the zoo model stored in a checkpoint; returns (model, checkpoint dict)."""
    ckpt = load_checkpoint(path, which, map_location)
    record = ckpt["model"]
    if not record:
        raise CheckpointError(f"{ckpt['path']} holds a custom model that is not in the zoo: build it "
                              f"yourself and load_state_dict(checkpoint['student'])")
    from kdforge.engine.quantize import like_checkpoint

    model = like_checkpoint(model_from_record(record), ckpt)  # a QAT student: its prepared graph
    load_weights(model, ckpt["student"], ckpt["path"])
    return model, ckpt


def model_from_record(record: dict[str, Any]) -> nn.Module:
    """A fresh zoo model as a checkpoint's model record ({name, num_classes, in_channels, options}) describes it,
    or the imported model its record names ({import, kwargs, ..., image_size}: `models/imported.py`)."""
    from kdforge.models import build_model

    if record.get("import"):
        from kdforge.models.imported import build_imported

        return build_imported(record["import"], record.get("kwargs") or {}, num_classes=record["num_classes"],
                              in_channels=record["in_channels"], image_size=record["image_size"],
                              where="the checkpoint's model (import)")

    return build_model(record["name"], num_classes=record["num_classes"], in_channels=record["in_channels"],
                       **(record.get("options") or {}))
