"""Run logs: one JSON object per line (steps and epochs), mirrored to TensorBoard if installed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Appends records to `log.jsonl`; `kind` is 'step', 'epoch' or 'info'."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        self._file = open(self.path, "a", buffering=1) if enabled else None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("TensorBoard is not installed (pip install tensorboard); logging to JSONL only",
                              stacklevel=2)
            else:
                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, kind: str, record: dict[str, Any], step: int | None = None) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, **{k: _json_value(v) for k, v in record.items()}}
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None and step is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_log(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl (optionally only one kind)."""
    rows = []
    with open(Path(run_dir) / "log.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            if kind is None or row["kind"] == kind:
                rows.append(row)
    return rows


def truncate_log(run_dir: str | Path, step: int) -> None:
    """Drop records after optimizer step `step` (written after the checkpoint a run resumes from)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if json.loads(line).get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
