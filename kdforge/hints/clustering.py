"""Clustering a teacher's layers into K groups whose centres become hint layers.

PURSUhInT (Keser et al., "In Search of Informative Hint Points Based on Layer
Clustering for Knowledge Distillation", arXiv 2103.00053) runs a k-medoids-like
loop on a layer distance matrix: assign every layer to its nearest centre layer,
then move each centre to the member whose index is nearest the mean member index
(layers of different widths cannot be averaged), until the centres stop changing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LayerClusters:
    """Result of ``cluster_layers``."""

    centres: tuple[int, ...]      # the hint layers: layer indices, ascending
    assignment: tuple[int, ...]   # for every layer, the index (into centres) of its cluster
    iterations: int               # assignment/update rounds run
    converged: bool               # centres stopped changing before max_iter

    def members(self, cluster: int) -> list[int]:
        """Layer indices (ascending) assigned to cluster number `cluster`."""
        if not 0 <= cluster < len(self.centres):
            raise ValueError(f"cluster must be in [0, {len(self.centres)}), got {cluster}")
        return [layer for layer, c in enumerate(self.assignment) if c == cluster]


def initial_centres(num_layers: int, k: int) -> list[int]:
    """Evenly spaced centre layers floor(t (L-1) / (K-1)) for t = 0..K-1 (K = 1: [0])."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if not 1 <= k <= num_layers:
        raise ValueError(f"k must be in [1, num_layers = {num_layers}], got {k}")
    if k == 1:
        return [0]
    return [t * (num_layers - 1) // (k - 1) for t in range(k)]


def _check_distances(distances: Tensor) -> Tensor:
    """`distances` as float64 on the CPU after checking it is square, 2-D and finite."""
    d = torch.as_tensor(distances)
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"distances must be a non-empty square (L, L) matrix, got shape {tuple(d.shape)}")
    if d.is_complex() or not bool(torch.isfinite(d).all()):
        raise ValueError("distances must be real and finite (no nan or inf)")
    return d.detach().to(device="cpu", dtype=torch.float64)


def _assign(distances: Tensor, centres: Tensor) -> Tensor:
    """Index into `centres` (ascending) of each layer's nearest centre. Ties: the centre
    nearest in layer index, then the lower centre."""
    to_centre = distances[:, centres]
    tied = to_centre == to_centre.min(1, keepdim=True).values
    layers = torch.arange(distances.shape[0])
    gap = (layers[:, None] - centres[None, :]).abs().masked_fill(~tied, distances.shape[0])
    nearest = gap == gap.min(1, keepdim=True).values
    return nearest.to(torch.uint8).argmax(1)  # first True: the lowest centre


def _update(assignment: Tensor, k: int) -> Tensor:
    """Per cluster, the member whose index is nearest the members' mean index (tie: lower),
    in exact integer arithmetic: |layer * count - sum of members|."""
    layers = torch.arange(assignment.numel())
    member = assignment[:, None] == torch.arange(k)[None, :]
    counts = member.sum(0)
    if bool((counts == 0).any()):
        raise RuntimeError(f"a cluster became empty (member counts {counts.tolist()}); "
                           "is the distance of each layer to itself its smallest distance?")
    sums = (member * layers[:, None]).sum(0)
    gap = (layers[:, None] * counts[None, :] - sums[None, :]).abs()
    gap = gap.masked_fill(~member, torch.iinfo(gap.dtype).max)
    return gap.argmin(0)  # first minimum: the lower layer index


def cluster_layers(distances: Tensor, k: int, max_iter: int = 100) -> LayerClusters:
    """Cluster L layers into `k` groups from their (L, L) distance matrix (PURSUhInT,
    arXiv 2103.00053, Sec. 3).

    Start from ``initial_centres(L, k)``; each round assigns every layer to the centre
    at the smallest ``distances[layer, centre]`` (ties: nearest centre by index, then
    the lower one) and moves each centre to the member nearest the mean member index
    (tie: the lower). Stops when the centres do not change (``converged``) or after
    `max_iter` rounds. The assignment returned is the one for the returned centres.
    """
    d = _check_distances(distances)
    if not 1 <= k <= d.shape[0]:
        raise ValueError(f"k must be in [1, L = {d.shape[0]}], got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    centres = torch.tensor(initial_centres(d.shape[0], k))
    converged, rounds = False, 0
    while rounds < max_iter and not converged:
        rounds += 1
        moved = _update(_assign(d, centres), k).sort().values
        converged = torch.equal(moved, centres)
        centres = moved
    assignment = _assign(d, centres)
    return LayerClusters(tuple(centres.tolist()), tuple(assignment.tolist()), rounds, converged)
