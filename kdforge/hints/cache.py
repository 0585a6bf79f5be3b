"""A hint selection is a property of the teacher: compute it once per checkpoint, then reuse it.

Selections are saved next to the teacher checkpoint, in `<checkpoint folder>/hints/`,
named by the settings that change the result, and carry the fingerprints (SHA-256) of the
checkpoint file and of the probe images, so a retrained teacher or other data never
reuses a stale selection.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from torch import nn

from kdforge.hints.probe import candidate_layers
from kdforge.hints.selection import HintFileError, HintSelection, draw_probe_set, select_hints


def checkpoint_fingerprint(path: str | Path) -> str:
    """SHA-256 of a checkpoint file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file(checkpoint: str | Path, *, metric: str, k: int, n: int, seed: int, layers: list[str],
               rbf_samples: int, images: str = "") -> Path:
    """Where the selection of these settings (and probe images, by fingerprint) for this checkpoint is kept."""
    checkpoint = Path(checkpoint)
    extra = hashlib.sha256(json.dumps([layers, rbf_samples if metric in ("cka_rbf", "combined") else None, images])
                           .encode()).hexdigest()[:8]
    return checkpoint.parent / "hints" / f"{checkpoint.stem}-{metric}-k{k}-n{n}-seed{seed}-{extra}.json"


def _reusable(path: Path, fingerprint: str, layers: list[str], images: str) -> HintSelection | None:
    if not path.is_file():
        return None
    try:
        saved = HintSelection.load(path)
    except HintFileError:
        return None
    same = (saved.teacher.get("fingerprint") == fingerprint and saved.layers == layers
            and saved.probe.get("images_sha256") == images)
    return saved if same else None


def cached_select(teacher: nn.Module, checkpoint: str | Path | None, dataset, *, k: int, metric: str = "cca",
                  candidates: list[str] | None = None, probe: int = 10000, seed: int = 0,
                  rbf_samples: int = 2000, use_cache: bool = True, **options) -> tuple[HintSelection, Path | None, bool]:
    """(selection, cache file or None, whether it came from the cache).

    Without a checkpoint (a teacher in memory) nothing is cached. `options` go to `select_hints`.
    """
    layers = candidate_layers(teacher, candidates)
    indices, images = probe_set = draw_probe_set(dataset, probe, seed)
    path = fingerprint = None
    if checkpoint is not None:
        fingerprint = checkpoint_fingerprint(checkpoint)
        path = cache_file(checkpoint, metric=metric, k=k, n=len(indices), seed=seed, layers=layers,
                          rbf_samples=rbf_samples, images=images)
        if use_cache:
            saved = _reusable(path, fingerprint, layers, images)
            if saved is not None:
                return saved, path, True
    selection = select_hints(teacher, dataset, k=k, metric=metric, candidates=candidates, probe=probe, seed=seed,
                             rbf_samples=rbf_samples, probe_set=probe_set, **options)
    if checkpoint is not None:
        selection.teacher.update(checkpoint=str(checkpoint), fingerprint=fingerprint)
        try:
            selection.save(path)
        except OSError as exc:  # a read-only teacher folder: the run still goes on
            warnings.warn(f"hint selection not cached at {path}: {exc}", stacklevel=2)
            path = None
    return selection, path, False
