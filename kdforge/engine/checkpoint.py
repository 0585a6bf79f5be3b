"""Atomic checkpoints and loading models back from them.

A checkpoint is written to a temporary file in the same folder, flushed to disk, and
renamed over the old one, so a crash mid-write never replaces a good checkpoint.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdforge.errors import CheckpointError

FORMAT = "kdforge-checkpoint/1"


def atomic_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint file, or the `which` checkpoint of a run folder."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file():
            candidate = path / "checkpoints" / "last.pt"
        if not candidate.is_file():
            raise CheckpointError(f"run folder {path} has no checkpoints/{which}.pt or checkpoints/last.pt")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (give a .pt file or a run folder)")
    return path


def run_folder(path: str | Path) -> Path:
    """The run folder of a run folder or of one of its checkpoint files (a lone .pt file: its folder)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def load_checkpoint(path: str | Path, which: str = "best", map_location: str | torch.device = "cpu") -> dict:
    """Read a kdforge checkpoint; a clear error for a missing, truncated or foreign file."""
    file = resolve_checkpoint(path, which)
    try:
        # weights_only: a checkpoint is data; loading one never runs code from the file
        ckpt = torch.load(file, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {file} cannot be read (truncated, not a PyTorch file, or holding "
                              f"code objects): {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a kdforge checkpoint (no '{FORMAT}' marker)")
    ckpt["path"] = str(file)
    return ckpt


def load_weights(model: nn.Module, state: dict, source: str) -> None:
    """Load a state dict strictly, turning a mismatch into a readable CheckpointError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {' '.join(first)[:300]}"
        ) from None


def load_model(path: str | Path, which: str = "best", map_location: str | torch.device = "cpu"):
    """Rebuild the zoo model stored in a checkpoint; returns (model, checkpoint dict)."""
    from kdforge.models import build_model

    ckpt = load_checkpoint(path, which, map_location)
    record = ckpt["model"]
    if not record:
        raise CheckpointError(f"{ckpt['path']} holds a custom model that is not in the zoo: build it "
                              f"yourself and load_state_dict(checkpoint['student'])")
    model = build_model(record["name"], num_classes=record["num_classes"],
                        in_channels=record["in_channels"], **record.get("options", {}))
    load_weights(model, ckpt["student"], ckpt["path"])
    return model, ckpt
