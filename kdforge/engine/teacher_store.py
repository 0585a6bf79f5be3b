"""The teacher's logits kept for a whole study (`train.teacher_store: DIR`), computed once per (seed, epoch, image).

A study (`kdforge compare`, `kdforge tune`) trains many students from one frozen teacher on the same data and
seeds. The order and the augmentation of an epoch depend only on (seed, epoch) (`data/loader.py`), so every run
of the study with the same seed feeds the teacher the same images and gets the same logits. The first run to
finish an epoch writes them, by dataset index, to the store; every later run with the same key looks them up
and skips the teacher's forward pass (the student's step is then all a step costs).

For logit-only runs: when a method taps the teacher's features, when the data is streamed, when
`train.teacher_cache` already serves the teacher, or in a distributed run, the teacher runs as usual and the
summary says why the store went unused.

The key is a digest of what the teacher's logits depend on: its weights, its model section, the run's data
section (without evaluation-only fields), the seed, the precision, the memory format, the device type and the
store's dtype. `DIR/<key>/epoch-<E>.pt` holds {"logits": [N, C] in the store dtype, "seen": [N] bool,
"out_dtype"}; a file is written (atomically) only by a run that trained the whole epoch from its first batch,
so a file lists every image the epoch visits. The logits are rounded to the store dtype in every run, the one
that records them too, so all runs of a study see identical teacher logits; with
`train.teacher_store_dtype: float32` a run equals the same run without a store exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from kdforge.errors import ConfigError

__all__ = ["TeacherLogitStore", "store_key_parts", "weights_digest", "why_store_unused"]

STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: data fields that change only evaluation, not the training images the teacher sees
_EVAL_ONLY = ("eval_split", "eval_batch_size", "workers", "memory_budget_gb", "skip_bad_files")


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, dtypes, shapes, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def store_key_parts(cfg, teacher: torch.nn.Module, precision) -> dict[str, Any]:
    """What the teacher's logits of a run depend on (`cfg` a RunConfig, `precision` the run's `Precision`)."""
    from kdforge.config import config_to_dict

    full = config_to_dict(cfg)
    data = {k: v for k, v in full["data"].items() if k not in _EVAL_ONLY}
    model = {k: v for k, v in (full.get("teacher") or {}).items() if k not in ("checkpoint", "which")}
    return {"teacher_weights": weights_digest(teacher), "teacher_class": type(teacher).__qualname__,
            "teacher": model, "data": data, "seed": cfg.seed, "precision": precision.name,
            "channels_last": precision.channels_last, "device": precision.device.type,
            "store_dtype": cfg.train.teacher_store_dtype}


def why_store_unused(trainer) -> str | None:
    """Why the run cannot use its teacher store (None: it can)."""
    if trainer.teacher_taps.taps:
        return f"the methods tap the teacher's features ({', '.join(map(str, trainer.teacher_taps.taps))})"
    if trainer.teacher_cache is not None:
        return "train.teacher_cache already serves the teacher's outputs"
    if trainer.dist.enabled:
        return "a distributed run (each process sees part of an epoch)"
    if getattr(trainer.train_data, "streaming", False):
        return "the training data is streamed"
    return None


class TeacherLogitStore:
    """One key's epochs of teacher logits; `start_epoch` loads or begins an epoch, then either `lookup` (serving)
    or `record` (recording) each batch, and `finish_epoch` writes a recorded epoch."""

    def __init__(self, folder: str | Path, num_images: int, num_classes: int, dtype: str, device: torch.device,
                 max_gb: float = 4.0):
        if dtype not in STORE_DTYPES:
            raise ConfigError(f"train.teacher_store_dtype: one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        self.folder = Path(folder)
        self.n, self.classes = int(num_images), int(num_classes)
        self.dtype = STORE_DTYPES[dtype]
        self.device = torch.device(device)
        gb = self.n * self.classes * self.dtype.itemsize / 1e9
        if gb > max_gb:
            raise ConfigError(f"train.teacher_store: an epoch's logits of {self.n} images x {self.classes} classes "
                              f"take {gb:.2f} GB, more than train.teacher_cache_max_gb={max_gb:g}; raise it, use "
                              f"train.teacher_store_dtype=float16 or drop train.teacher_store")
        self.epoch: int | None = None
        self.serving = False
        self.logits: torch.Tensor | None = None
        self.seen: torch.Tensor | None = None
        self.out_dtype: torch.dtype | None = None
        self._from_start = False
        self.served_images = 0  # images of this run whose logits were looked up
        self.computed_images = 0  # images of this run the teacher ran on

    @classmethod
    def open(cls, root: str | Path, key_parts: dict[str, Any], num_images: int, num_classes: int, dtype: str,
             device: torch.device, max_gb: float = 4.0) -> TeacherLogitStore:
        """The store of `key_parts` under `root` (created if new, with a `key.json` saying what it holds)."""
        from kdforge.engine.checkpoint import atomic_write

        text = json.dumps(key_parts, sort_keys=True, default=str)
        folder = Path(root) / hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"train.teacher_store: cannot create {folder}: {exc.strerror or exc}") from None
        if not (folder / "key.json").is_file():
            atomic_write(folder / "key.json", lambda p: p.write_text(json.dumps(key_parts, indent=2,
                                                                                 sort_keys=True, default=str)))
        return cls(folder, num_images, num_classes, dtype, device, max_gb)

    def path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch}.pt"

    # ------------------------------------------------------------------ epochs
    def start_epoch(self, epoch: int, visited: torch.Tensor, first_batch: int = 0) -> None:
        """Begin `epoch`, whose batches visit the dataset indices `visited`: serve it when a stored file holds them
        all, else record it (written at the end only if the run trains it from its first batch)."""
        self.epoch, self._from_start = int(epoch), first_batch == 0
        stored = self._load(self.epoch)
        if stored is not None and bool(stored["seen"][visited.to("cpu")].all()):
            self.serving = True
            self.logits = stored["logits"].to(self.device)
            self.seen = stored["seen"].to(self.device)
            self.out_dtype = STORE_DTYPES[stored["out_dtype"]]
            return
        self.serving = False
        self.logits = torch.zeros(self.n, self.classes, dtype=self.dtype, device=self.device)
        self.seen = torch.zeros(self.n, dtype=torch.bool, device=self.device)  # on the device: no sync per step
        self.out_dtype = None

    def _load(self, epoch: int) -> dict[str, Any] | None:
        path = self.path(epoch)
        if not path.is_file():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file is recomputed (and rewritten) rather than trusted
            return None
        if (stored.get("logits") is None or tuple(stored["logits"].shape) != (self.n, self.classes)
                or stored["logits"].dtype != self.dtype or stored.get("out_dtype") not in STORE_DTYPES):
            return None
        return stored

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """The stored logits of these dataset indices, in the dtype the teacher gave them."""
        self.served_images += indices.numel()
        return self.logits[indices.to(self.device)].to(self.out_dtype)

    def record(self, indices: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Keep the teacher's logits of these images; returns them rounded to the store dtype, as later runs see
        them."""
        rounded = logits.detach().to(self.dtype)
        indices = indices.to(self.device)
        self.logits[indices] = rounded
        self.seen[indices] = True
        self.out_dtype = logits.dtype
        self.computed_images += indices.numel()
        return rounded.to(logits.dtype)

    def finish_epoch(self, complete: bool) -> bool:
        """Write a recorded epoch the run trained whole (from its first batch); returns whether it wrote."""
        from kdforge.engine.checkpoint import atomic_save

        wrote = False
        if not self.serving and complete and self._from_start and self.out_dtype is not None:
            name = next(k for k, v in STORE_DTYPES.items() if v == self.out_dtype)
            atomic_save({"logits": self.logits.to("cpu"), "seen": self.seen.to("cpu"), "out_dtype": name},
                        self.path(self.epoch))
            wrote = True
        self.logits = self.seen = None
        return wrote

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "dtype": str(self.dtype).removeprefix("torch."),
                "served_images": self.served_images, "computed_images": self.computed_images}
