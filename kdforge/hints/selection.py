"""PURSUhInT hint selection: probe the teacher, measure layer distances, cluster, keep the centres.

Keser, Ayanzadeh, Aghdam, Kilcioglu, Toreyin & Ure, "PURSUhInT: In Search of Informative Hint Points Based on
Layer Clustering for Knowledge Distillation", Expert Systems with Applications 213, 2023
(arXiv:2103.00053). The selection depends only on the teacher (and the probe set), so it
is computed once per teacher and saved as a small JSON/YAML file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from kdforge.errors import ConfigError, KDForgeError
from kdforge.hints.clustering import cluster_layers
from kdforge.hints.probe import candidate_layers, probe_features, probe_indices
from kdforge.hints.similarity import METRICS, distance_matrix
from kdforge.models.capabilities import model_record_of

FORMAT = "kdforge-hints-1"
ALL_METRICS = (*METRICS, "combined")


class HintError(KDForgeError):
    """A hint selection that cannot be made (e.g. a teacher whose features are not finite)."""


class HintFileError(HintError):
    """A saved hint selection that cannot be read or does not fit the teacher."""


@dataclass
class HintSelection:
    """The result of one selection: candidate layers, their distances, clusters and centres."""

    layers: list[str]  # candidate layers, in network order
    channels: list[int]  # C of each candidate layer
    metric: str
    k: int
    distances: list[list[float]]  # (L, L)
    centres: list[int]  # indices into `layers`, ascending: the hint layers
    assignment: list[int]  # cluster (index into centres) of every layer
    iterations: int
    converged: bool
    stage_ends: list[int] = field(default_factory=list)  # indices of the teacher's stage ends, if known
    teacher: dict[str, Any] = field(default_factory=dict)  # model, checkpoint, fingerprint
    probe: dict[str, Any] = field(default_factory=dict)  # dataset, split, n, seed
    seconds: dict[str, float] = field(default_factory=dict)  # probe / distances / clustering time

    @property
    def hints(self) -> list[str]:
        """The selected teacher layers (cluster centres), shallow to deep."""
        return [self.layers[i] for i in self.centres]

    def members(self, cluster: int) -> list[int]:
        return [i for i, c in enumerate(self.assignment) if c == cluster]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "hints": self.hints, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write as JSON, or YAML for a .yaml/.yml name; atomic (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=1)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HintSelection":
        path = Path(path)
        if path.is_dir():
            raise HintFileError(f"hint selection {path} is a folder: give the .json or .yaml file that "
                                f"`kdforge hints` saved")
        if not path.is_file():
            raise HintFileError(f"hint selection {path} does not exist (make one with `kdforge hints`)")
        try:
            text = path.read_text()
            data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise HintFileError(f"hint selection {path} cannot be read: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HintFileError(f"{path} is not a kdforge hint selection (no format: {FORMAT})")
        names = {f for f in cls.__dataclass_fields__}
        try:
            selection = cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise HintFileError(f"hint selection {path} is incomplete: {exc}") from None
        selection.check(str(path))
        if "hints" in data and data["hints"] != selection.hints:
            raise HintFileError(
                f"{path}: its `hints` {data['hints']} are not the layers its `centres` point to "
                f"{selection.hints}; the file is read from `centres` and `layers`, so edit those (or give the "
                f"method its teacher_layers directly)")
        return selection

    def check(self, where: str) -> None:
        """Internal consistency of a loaded selection."""
        n = len(self.layers)
        problems = []
        if len(self.channels) != n or len(self.assignment) != n or len(self.distances) != n \
                or any(len(row) != n for row in self.distances):
            problems.append("layers, channels, assignment and the (L, L) distances differ in length")
        if len(self.centres) != self.k or any(not 0 <= c < n for c in self.centres):
            problems.append(f"centres {self.centres} do not index {self.k} of the {n} layers")
        if any(not 0 <= c < self.k for c in self.assignment):
            problems.append(f"assignment {self.assignment} names clusters outside 0..{self.k - 1}")
        if problems:
            raise HintFileError(f"hint selection {where}: {'; '.join(problems)}")


def probe_fingerprint(dataset, indices: torch.Tensor) -> str:
    """SHA-256 of the probe images' bytes: tells a cached selection whether it saw the same images."""
    if getattr(dataset, "streaming", False):  # files on disk: their paths (decoding them all here would be slow)
        return hashlib.sha256("\n".join(dataset.paths[i] for i in indices.tolist()).encode()).hexdigest()
    return hashlib.sha256(dataset.images[indices].cpu().contiguous().numpy().tobytes()).hexdigest()


def draw_probe_set(dataset, probe: int, seed: int) -> tuple[torch.Tensor, str]:
    """(probe indices, SHA-256 of their images): what a selection is made on, and how a cache recognises it."""
    indices = probe_indices(len(dataset), probe, seed)
    return indices, probe_fingerprint(dataset, indices)


def stage_end_indices(model: nn.Module, layers: list[str]) -> list[int]:
    """Positions in `layers` of the last block of each of the model's stages (empty if unknown)."""
    ends = []
    for stage in getattr(model, "stage_names", None) or []:
        inside = [i for i, name in enumerate(layers) if name == stage or name.startswith(stage + ".")]
        if inside:
            ends.append(inside[-1])
    return ends


def select_hints(teacher: nn.Module, dataset, *, k: int, metric: str = "cca", candidates: list[str] | None = None,
                 probe: int = 10000, seed: int = 0, batch_size: int = 256, device: torch.device | str = "cpu",
                 precision=None, rbf_samples: int = 2000, max_iter: int = 100, progress: bool = False,
                 probe_set: tuple[torch.Tensor, str] | None = None) -> HintSelection:
    """Run the whole selection on `teacher` with a probe set drawn from `dataset` (a training split).

    `probe_set`: (indices, images fingerprint) when the caller has drawn them already.
    """
    if metric not in ALL_METRICS:
        raise ConfigError(f"hints.metric: {metric!r} is not a metric; choose one of {', '.join(ALL_METRICS)}")
    layers = candidate_layers(teacher, candidates)
    if not 1 <= k <= len(layers):
        raise ConfigError(f"hints.k: {k} hint layers cannot be chosen from {len(layers)} candidate layers")
    clock = time.perf_counter()
    indices, images = probe_set or draw_probe_set(dataset, probe, seed)
    features = probe_features(teacher, dataset, layers, indices, batch_size=batch_size, device=device,
                              precision=precision, progress=progress)
    t_probe = time.perf_counter() - clock
    for name, f in zip(layers, features):
        if not bool(torch.isfinite(f).all()):
            raise HintError(f"the teacher's layer '{name}' gives non-finite values on the probe images; "
                            f"is the teacher checkpoint broken (diverged training)?")
    try:
        distances = distance_matrix(features, metric, rbf_samples=rbf_samples)
    except ValueError as exc:
        raise HintError(f"hint selection: {exc}") from None
    t_dist = time.perf_counter() - clock - t_probe
    clusters = cluster_layers(distances, k, max_iter=max_iter)
    t_total = time.perf_counter() - clock
    return HintSelection(
        layers=layers, channels=[int(f.shape[1]) for f in features], metric=metric, k=k,
        distances=[[round(float(v), 6) for v in row] for row in distances.tolist()],
        centres=list(clusters.centres), assignment=list(clusters.assignment), iterations=clusters.iterations,
        converged=clusters.converged, stage_ends=stage_end_indices(teacher, layers),
        teacher={"model": (model_record_of(teacher) or {}).get("name", type(teacher).__name__)},
        probe={"dataset": getattr(dataset, "name", "?"), "n": len(indices), "seed": seed,
               "images_sha256": images},
        seconds={"probe": round(t_probe, 3), "distances": round(t_dist, 3),
                 "clustering": round(t_total - t_probe - t_dist, 3)},
    )
