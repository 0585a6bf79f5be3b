"""Batched, vectorised augmentation on image tensors (runs on the training device)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["random_crop", "random_hflip", "normalize", "PixelNormalization", "Augment"]


def _check_batch(x: torch.Tensor, fn: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{fn}: expected a batch (B, C, H, W), got {shape}")


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` on every side, then crop each image back to ``H x W``.

    Each image gets its own offsets ``(dy, dx)``, uniform in ``[0, 2*padding]``,
    drawn from ``generator`` (which must live on ``x.device``); the crop is a
    single ``gather``, with no Python loop over images. dtype is kept.
    """
    _check_batch(x, "random_crop")
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0 or x.shape[0] == 0:
        return x
    b, c, h, w = x.shape
    p = int(padding)
    hp, wp = h + 2 * p, w + 2 * p
    offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator, device=x.device)
    dy, dx = offsets[0], offsets[1]
    padded = F.pad(x, (p, p, p, p)).reshape(b, c, hp * wp)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w)  # (B, 1, H*W)
    return padded.gather(2, flat.expand(b, c, h * w)).reshape(b, c, h, w)


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (one ``torch.where``)."""
    _check_batch(x, "random_hflip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p must be in [0, 1], got {p}")
    if p == 0.0 or x.shape[0] == 0:
        return x
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def _stats(v, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`v` as a (C, 1, 1) tensor on `like`'s device; a tuple's tensor is built once per device and dtype (no
    host-to-device copy each batch). The result is read, never written in place."""
    if isinstance(v, tuple):
        return _stats_of_tuple(v, like.device, dtype)
    return torch.as_tensor(v, dtype=dtype, device=like.device).reshape(-1, 1, 1)


@functools.lru_cache(maxsize=64)
def _stats_of_tuple(v: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(v, dtype=dtype, device=device).reshape(-1, 1, 1)


def normalize(
    x: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` for uint8 input, ``(x - mean) / std`` for float input in ``[0, 1]``.

    Works on ``(C, H, W)`` or ``(B, C, H, W)``. The arithmetic is done in
    float32 (or float64 when asked) and the result cast to ``dtype``.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if x.dtype == torch.uint8:
        y = x.to(work).div_(255.0)
    elif x.is_floating_point():
        y = x.to(work, copy=True)
    else:
        raise TypeError(f"normalize: expected uint8 or floating-point images, got {x.dtype}")
    y.sub_(_stats(mean, y, work)).div_(_stats(std, y, work))
    return y if y.dtype == dtype else y.to(dtype)


@dataclass(frozen=True)
class PixelNormalization:
    """The per-channel mean and std (in [0, 1] units) a loader normalises with. `to_unit` maps its images
    back to pixel values in [0, 1] (float32), `from_unit` forth: for augmentations of a training batch that
    need pixel values (MLKD's strong view)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * _stats(self.std, x, torch.float32) + _stats(self.mean, x, torch.float32)

    def from_unit(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return normalize(x, self.mean, self.std, dtype=dtype)

    def mean_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The mean as a (C,) float32 tensor on `like`'s device (built once per device)."""
        return _stats(tuple(self.mean), like, torch.float32).view(-1)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random crop with zero padding, then random horizontal flip.

    ``Augment(crop_padding=4, hflip=True)`` is the usual CIFAR recipe.
    ``augment(x_uint8, generator)`` returns a uint8 batch of the same shape.
    """

    crop_padding: int = 4
    hflip: bool = True
    hflip_p: float = 0.5

    def __post_init__(self) -> None:
        if int(self.crop_padding) != self.crop_padding or self.crop_padding < 0:
            raise ValueError(f"Augment: crop_padding must be a non-negative integer, got {self.crop_padding}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ValueError(f"Augment: hflip_p must be in [0, 1], got {self.hflip_p}")

    @classmethod
    def none(cls) -> "Augment":
        """The identity augmentation (``is_random`` is False)."""
        return cls(crop_padding=0, hflip=False)

    @property
    def is_random(self) -> bool:
        """False when the augmentation is the identity, so teacher outputs can be cached per image."""
        return self.crop_padding > 0 or (self.hflip and self.hflip_p > 0)

    def key(self) -> tuple:
        """A hashable description of the random transform (for teacher-output cache keys)."""
        if not self.is_random:
            return ("identity",)
        return (
            "crop", int(self.crop_padding),
            "hflip", float(self.hflip_p) if self.hflip else 0.0,
        )  # fmt: skip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_padding > 0:
            x = random_crop(x, int(self.crop_padding), generator)
        if self.hflip and self.hflip_p > 0:
            x = random_hflip(x, generator, self.hflip_p)
        return x
