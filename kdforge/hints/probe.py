"""The probe pass: pooled layer representations of a teacher on N training images.

Streams the probe images in batches, without augmentation, and keeps for every layer
only its global-average-pooled (N, C) matrix, so memory grows with N x sum(C), never
with the feature maps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import ConfigError, LayerError
from kdforge.features import Tap, expand_patterns, first_tensor, resolve_module


def probe_indices(num_samples: int, n: int, seed: int) -> torch.Tensor:
    """`min(n, num_samples)` distinct dataset indices in a random order drawn from `seed` alone.

    Not sorted: any leading part of the probe set (e.g. the rows `cka_rbf` uses) is itself a
    random sample, even of a dataset stored class by class.
    """
    if n < 2 or num_samples < 2:
        raise ConfigError(f"hints.probe: the probe set needs at least 2 images (layer similarities are "
                          f"statistics over images); asked for {n} of a dataset of {num_samples}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randperm(num_samples, generator=g)[:n]


def candidate_layers(model: nn.Module, patterns: Sequence[str] | None = None) -> list[str]:
    """The layers to cluster: `patterns` (module names or globs) or every block output of a zoo model."""
    if patterns:
        layers = expand_patterns(model, patterns)
    else:
        layers = list(getattr(model, "block_names", None) or [])
        if not layers:
            raise LayerError(f"{type(model).__name__} has no `block_names`: give the candidate layers as module "
                             f"names or globs (hints.candidates, or --layers)")
    if len(layers) != len(set(layers)):
        raise LayerError(f"candidate layers repeat: {layers}")
    return layers


def pool(features: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (N, C): the mean over every position (global average pooling)."""
    if features.dim() < 2:
        raise LayerError(f"a probed layer must give (N, C, ...) tensors, got shape {tuple(features.shape)}")
    return features.float().flatten(2).mean(2) if features.dim() > 2 else features.float()


class PooledTaps:
    """Forward hooks that keep only the global-average-pooled (N, C) value of each tap, so a
    tapped feature map is freed as soon as the network no longer needs it."""

    def __init__(self, model: nn.Module, taps: Sequence[str]):
        self.pooled: dict[str, torch.Tensor] = {}
        self._handles = []
        for text in taps:
            tap = Tap.parse(text)
            module = resolve_module(model, tap.module)
            if tap.what == "input":
                self._handles.append(module.register_forward_pre_hook(self._keep(text, lambda args: args)))
            else:
                self._handles.append(module.register_forward_hook(self._keep(text, lambda args, out: out)))

    def _keep(self, key: str, pick):
        def hook(_module, *values):
            self.pooled[key] = pool(first_tensor(pick(*values)))
        return hook

    def __enter__(self) -> "PooledTaps":
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()


@torch.no_grad()
def probe_features(model: nn.Module, dataset, layers: Sequence[str], indices: torch.Tensor, *,
                   batch_size: int = 256, device: torch.device | str = "cpu",
                   precision=None, progress: bool = False) -> list[torch.Tensor]:
    """Pooled (N, C_l) float32 CPU matrices of `layers`, in order, for `dataset[indices]` (of a streamed split
    under data.skip_bad_files, its readable ones: N may be fewer).

    `precision` (an `engine.precision.Precision`) sets autocast and memory format; None
    runs in fp32. The model runs on `device` in eval mode and is put back where and as it was.
    """
    from kdforge.data.batches import subset_loader

    device = torch.device(device)
    home = next(iter(model.parameters()), torch.empty(0)).device
    channels_last = bool(precision is not None and precision.channels_last)
    loader = subset_loader(dataset, indices, batch_size, device=device, channels_last=channels_last)
    # written in place, batch by batch: many small long-lived tensors between the big
    # activations would fragment the heap and hold on to memory
    pooled: list[torch.Tensor] = []
    was_training = model.training
    model.to(device).eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(indices), desc="probe", unit="img", leave=False, dynamic_ncols=True)
    start = 0
    try:
        with PooledTaps(model, layers) as taps:
            for images, _ in loader:
                taps.pooled = {}
                with precision.autocast() if precision is not None else contextlib.nullcontext():
                    model(images)
                missing = [name for name in layers if name not in taps.pooled]
                if missing:
                    raise LayerError(f"layers {missing} were not called in the forward pass, so nothing was probed")
                if not pooled:
                    pooled = [torch.empty(len(loader.data), taps.pooled[name].shape[1]) for name in layers]
                end = start + images.shape[0]
                for store, name in zip(pooled, layers):
                    store[start:end].copy_(taps.pooled[name])
                taps.pooled = {}
                start = end
                if bar is not None:
                    bar.update(images.shape[0])
    finally:
        model.to(home).train(was_training)
        if bar is not None:
            bar.close()
    return pooled
