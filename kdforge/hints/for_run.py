"""A training run's `hints:` section: which teacher layers its hint methods use, and with which student layers.

Hint k (the k-th selected teacher layer, shallow to deep) is paired with the end of
student stage k, or with `hints.student_layers[k]`. Every active hint method
(`Method.uses_hints`) whose layers the config does not name takes these pairs. The
selection a run used is saved in its folder as `hints.json`; a resumed run reads it back.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from kdforge.config import RunConfig
from kdforge.errors import ConfigError
from kdforge.features import Tap, expand_patterns, resolve_module
from kdforge.hints.cache import cached_select, checkpoint_fingerprint
from kdforge.hints.selection import HintFileError, HintSelection
from kdforge.models.capabilities import model_record_of

RUN_FILE = "hints.json"


@dataclass
class HintPlan:
    selection: HintSelection | None  # None for `select: stage_ends`
    teacher_layers: list[str]
    student_layers: list[str]
    source: str  # where the layers came from (a file, the cache, "selected", "stage ends")

    def describe(self) -> str:
        pairs = ", ".join(f"{t} -> {s}" for t, s in zip(self.teacher_layers, self.student_layers))
        how = f"{self.selection.metric}, k={self.selection.k}, " if self.selection else ""
        return f"hints ({how}{self.source}): {pairs}"


def teacher_stage_ends(teacher: nn.Module, candidates: list[str] | None) -> list[str]:
    """The usual hint points, as candidate layers: the last block of each teacher stage."""
    from kdforge.hints.probe import candidate_layers
    from kdforge.hints.selection import stage_end_indices

    layers = candidate_layers(teacher, candidates)
    ends = stage_end_indices(teacher, layers)
    if not ends:
        raise ConfigError(f"hints.select: stage_ends needs a teacher with `stage_names`; {type(teacher).__name__} "
                          f"has none")
    return [layers[i] for i in ends]


def student_hint_layers(student: nn.Module, given: list[str] | None) -> list[str]:
    """The student layers hints pair with: `given` (names or globs, expanded) or the student's stage ends."""
    if given:
        layers = expand_patterns(student, given)
    else:
        layers = list(getattr(student, "stage_names", None) or [])
        if not layers:
            raise ConfigError(f"hints.student_layers: {type(student).__name__} has no `stage_names`; "
                              f"name one student layer per hint")
    for layer in layers:
        resolve_module(student, Tap.parse(layer).module)
    return layers


def _fits_teacher(selection: HintSelection, teacher: nn.Module, checkpoint: str | None, where: str) -> None:
    for layer in selection.hints:
        try:
            resolve_module(teacher, Tap.parse(layer).module)
        except Exception as exc:  # a LayerError naming close matches
            raise HintFileError(f"{where}: hint layer '{layer}' is not in the teacher ({exc})") from None
    model = (model_record_of(teacher) or {}).get("name")
    saved_model = selection.teacher.get("model")
    if model and saved_model and model != saved_model:
        raise HintFileError(f"{where} was selected for a {saved_model} teacher, but this run's teacher is a {model}")
    saved_print = selection.teacher.get("fingerprint")
    if checkpoint and saved_print and saved_print != checkpoint_fingerprint(checkpoint):
        warnings.warn(f"{where} was selected on another checkpoint than {checkpoint}; using it anyway",
                      stacklevel=3)


def plan_hints(cfg: RunConfig, teacher: nn.Module | None, student: nn.Module, train_data, run_dir: Path,
               resume: bool = False, progress: bool = True) -> HintPlan | None:
    """The run's hint pairs (None without a `hints:` section); selects and caches them when `auto`."""
    h = cfg.hints
    if h is None:
        return None
    if teacher is None:
        raise ConfigError("hints: hint layers are teacher layers; set teacher.checkpoint (and a hint loss)")
    from kdforge.engine.checkpoint import resolve_checkpoint
    from kdforge.engine.precision import resolve_device

    checkpoint = str(resolve_checkpoint(cfg.teacher.checkpoint, cfg.teacher.which))
    student_layers = student_hint_layers(student, h.student_layers)
    k = h.k or len(student_layers)
    saved_in_run = Path(run_dir) / RUN_FILE
    if h.select == "stage_ends":
        selection, source = None, "stage ends"
        teacher_layers = teacher_stage_ends(teacher, h.candidates)
    elif resume and saved_in_run.is_file():
        selection, source = HintSelection.load(saved_in_run), str(saved_in_run)
    elif h.select != "auto":
        selection, source = HintSelection.load(h.select), h.select
        _fits_teacher(selection, teacher, checkpoint, f"hints.select {h.select}")
        if h.k is not None and h.k != selection.k:
            raise ConfigError(f"hints.k is {h.k} but {h.select} holds {selection.k} hints; drop hints.k or select "
                              f"again with `kdforge hints --k {h.k}`")
    else:
        selection, path, cached = cached_select(
            teacher, checkpoint if h.cache else None, train_data, k=k, metric=h.metric, candidates=h.candidates,
            probe=h.probe, seed=h.probe_seed, rbf_samples=h.rbf_samples, batch_size=h.batch_size,
            device=resolve_device(cfg.train.device), progress=progress)
        source = f"cached {path}" if cached else (f"selected, saved to {path}" if path else "selected")
    if selection is not None:
        teacher_layers = list(selection.hints)
        if not selection.converged:
            warnings.warn(f"the hint clustering ({source}) stopped after {selection.iterations} rounds without "
                          f"converging; its centres are used as they are", stacklevel=2)
    if len(teacher_layers) != len(student_layers):
        raise ConfigError(
            f"hints: {len(teacher_layers)} hint layers {teacher_layers} but {len(student_layers)} student layers "
            f"{student_layers}; set hints.k to {len(student_layers)} or give hints.student_layers, one per hint")
    return HintPlan(selection, teacher_layers, student_layers, source)


def hint_takers(losses) -> list[str]:
    """Keys of the active losses that will take hint pairs; a ConfigError if there is none."""
    active = set(map(id, losses.active()))
    takers = [key for key, m in losses.methods.items() if id(m) in active and m.wants_hints]
    if not takers:
        users = sorted({m.name for m in losses.methods.values() if m.uses_hints})
        raise ConfigError(
            "hints: no loss of this run takes hint layers: add one of the hint methods (fitnet, at, vid, crd, nst, "
            f"sp) without its own teacher_layers/student_layers{f' (present: {users})' if users else ''}, "
            "or remove `hints:`")
    return takers


def apply_hints(losses, plan: HintPlan) -> list[str]:
    """Hand the pairs to every active hint method that names no layers of its own; their keys."""
    takers = hint_takers(losses)
    for key in takers:
        losses.methods[key].take_hints(plan.teacher_layers, plan.student_layers)
    return takers
