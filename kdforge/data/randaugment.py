"""RandAugment with Cutout on batches of image tensors, on the training device (MLKD's strong view).

Each image gets `n` operations drawn uniformly, with replacement, from the fourteen of `OPERATIONS`, each
at a magnitude drawn uniformly from its range, then a Cutout square of a random side up to half the image
width: the strong augmentation of the MLKD authors' public code (their `RandAugment(2, 10)`, FixMatch's
variant: Sohn et al., NeurIPS 2020, after Cubuk et al., CVPR-W 2020). Their code applies it with PIL to one
image at a time; here every operation runs on the images that drew it, as batched tensor arithmetic.

Images are float tensors in [0, 1], shape (B, C, H, W). Our reading, marked: PIL works in uint8, so
posterize, solarize and equalize quantise to 256 levels and the others stay in float; geometric operations
sample the nearest pixel (PIL's default) and fill with black; the Cutout fill is the caller's `fill` (the
authors' fixed grey (125, 123, 114) is about CIFAR's mean; we take the dataset's mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["OPERATIONS", "rand_augment", "cutout"]


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma as PIL's 'L' conversion (ITU-R 601) for RGB; the channel mean otherwise. Shape (B, 1, H, W)."""
    if x.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)
    return x.mean(1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: degenerate + factor * (image - degenerate), clipped to [0, 1]."""
    return (degenerate + _per_image(factor) * (x - degenerate)).clamp_(0.0, 1.0)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """The image as integer levels 0..255."""
    return (x * 255.0).round_().clamp_(0, 255).long()


def auto_contrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stretch each channel of each image to span [0, 1] (a constant channel is kept)."""
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def brightness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, v)


def color(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x), x, v)


def contrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _blend(_gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), x, v)


def equalize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per channel, as PIL's ImageOps.equalize computes its lookup table."""
    b, c, h, w = x.shape
    levels = _levels(x).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, levels, torch.ones_like(levels))
    last = torch.where(hist > 0, torch.arange(256, device=x.device), -1).amax(1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255  # (B*C, 1); 0: nothing to equalise
    before = hist.cumsum(1) - hist
    lut = torch.where(step > 0, (step // 2 + before) // step.clamp_min(1), torch.arange(256, device=x.device))
    return (lut.clamp_(0, 255).gather(1, levels).to(x.dtype) / 255.0).view(b, c, h, w)


def identity(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x


def posterize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Keep the int(v) highest bits of each level."""
    shift = (8 - v.long().clamp(1, 8)).view(-1, 1, 1, 1)
    return ((_levels(x) >> shift) << shift).to(x.dtype) / 255.0


def sharpness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, the rest 1, over 13); border pixels stay as they are."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(smooth, x, v)


def solarize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Invert every level at or above the threshold v (0..256)."""
    return torch.where(_levels(x) >= _per_image(v), 1.0 - x, x)


def affine(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """PIL's Image.transform(AFFINE): output pixel (x, y) (its centre) takes the input pixel at
    (a x + b y + c, d x + e y + f) for each image's (a, b, c, d, e, f); nearest pixel, black outside."""
    b, ch, h, w = x.shape
    a_, b_, c_, d_, e_, f_ = coefficients.to(torch.float64).unbind(1)  # double, as PIL: a pixel on an edge
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float64) + 0.5,  # falls the same side
                            torch.arange(w, device=x.device, dtype=torch.float64) + 0.5, indexing="ij")
    src_x = (a_.view(-1, 1, 1) * xs + b_.view(-1, 1, 1) * ys + c_.view(-1, 1, 1)).floor_().long()
    src_y = (d_.view(-1, 1, 1) * xs + e_.view(-1, 1, 1) * ys + f_.view(-1, 1, 1)).floor_().long()
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)  # (B, H, W)
    flat = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).view(b, 1, h * w).expand(b, ch, h * w)
    out = x.reshape(b, ch, h * w).gather(2, flat).view(b, ch, h, w)
    return out * inside.unsqueeze(1).to(x.dtype)


def _coefficients(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows, dim=1)


def rotate(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Rotate by v degrees about the image centre (PIL's Image.rotate matrix)."""
    h, w = x.shape[2:]
    angle = -torch.deg2rad(v.to(torch.float64))
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    return affine(x, _coefficients([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy]))


def _shift(x: torch.Tensor, v: torch.Tensor, which: str) -> torch.Tensor:
    ones, zeros = torch.ones_like(v, dtype=torch.float64), torch.zeros_like(v, dtype=torch.float64)
    v = v.to(torch.float64)
    h, w = x.shape[2:]
    rows = {"shear_x": [ones, v, zeros, zeros, ones, zeros], "shear_y": [ones, zeros, zeros, v, ones, zeros],
            "translate_x": [ones, zeros, v * w, zeros, ones, zeros],
            "translate_y": [ones, zeros, zeros, zeros, ones, v * h]}[which]
    return affine(x, _coefficients(rows))


def shear_x(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _shift(x, v, "shear_x")


def shear_y(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _shift(x, v, "shear_y")


def translate_x(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shift by v times the width (v in [-0.3, 0.3])."""
    return _shift(x, v, "translate_x")


def translate_y(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _shift(x, v, "translate_y")


Operation = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (operation, lowest magnitude, highest magnitude): the authors' list and ranges
OPERATIONS: tuple[tuple[Operation, float, float], ...] = (
    (auto_contrast, 0.0, 1.0), (brightness, 0.05, 0.95), (color, 0.05, 0.95), (contrast, 0.05, 0.95),
    (equalize, 0.0, 1.0), (identity, 0.0, 1.0), (posterize, 4.0, 8.0), (rotate, -30.0, 30.0),
    (sharpness, 0.05, 0.95), (shear_x, -0.3, 0.3), (shear_y, -0.3, 0.3), (solarize, 0.0, 256.0),
    (translate_x, -0.3, 0.3), (translate_y, -0.3, 0.3),
)


def cutout(x: torch.Tensor, fraction: torch.Tensor, fill: torch.Tensor, centre: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Paint in each image a square of side `fraction` x width (per image, in [0, 0.5]) at `centre`
    ((2, B): x then y, in pixels; default uniform over the image), clipped at the borders as the authors'
    CutoutAbs (the square's corner is moved inside, then its far side clipped); `fill` per channel. A
    fraction of 0 leaves the image as it is."""
    b, c, h, w = x.shape
    side = fraction.to(torch.float32) * w
    if centre is None:
        centre = torch.rand(2, b, generator=generator, device=x.device) * torch.tensor([[w], [h]], device=x.device)
    x0 = (centre[0] - side / 2).clamp_min(0).floor()
    y0 = (centre[1] - side / 2).clamp_min(0).floor()
    x1, y1 = (x0 + side).clamp_max(w), (y0 + side).clamp_max(h)
    cols = torch.arange(w, device=x.device, dtype=torch.float32)
    rows = torch.arange(h, device=x.device, dtype=torch.float32)
    in_x = (cols >= x0[:, None]) & (cols <= x1[:, None])  # (B, W): PIL's rectangle includes both ends
    in_y = (rows >= y0[:, None]) & (rows <= y1[:, None])
    mask = (in_y[:, :, None] & in_x[:, None, :] & (side > 0)[:, None, None]).unsqueeze(1)
    return torch.where(mask, fill.to(x.dtype).view(1, c, 1, 1), x)


def rand_augment(x: torch.Tensor, fill: torch.Tensor, n: int = 2, max_cutout: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """`n` random operations per image, then Cutout of a side uniform in [0, max_cutout) of the width.

    x: (B, C, H, W) floats in [0, 1]; fill: (C,) the Cutout colour in [0, 1]. Returns a new tensor."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"rand_augment: expected a float batch (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
    if n < 0 or not 0.0 <= max_cutout <= 1.0:
        raise ValueError(f"rand_augment: n must be >= 0 and max_cutout in [0, 1], got n={n}, max_cutout={max_cutout}")
    b = x.shape[0]
    x = x.clamp(0.0, 1.0)
    chosen = torch.randint(0, len(OPERATIONS), (n, b), generator=generator, device=x.device)
    draws = torch.rand(n, b, generator=generator, device=x.device)
    for round_ in range(n):
        counts = torch.bincount(chosen[round_], minlength=len(OPERATIONS)).tolist()  # the round's one sync
        by_operation = torch.split(torch.argsort(chosen[round_], stable=True), counts)  # each group in image order
        for (operation, low, high), images in zip(OPERATIONS, by_operation):
            if images.numel() == 0 or operation is identity:
                continue
            magnitude = low + (high - low) * draws[round_, images]
            x[images] = operation(x[images], magnitude).to(x.dtype)
    fraction = torch.rand(b, generator=generator, device=x.device) * max_cutout
    return cutout(x, fraction, fill, generator=generator)

