"""1x1-conv adapters between student and teacher widths (NetGraft, Shen et al., AAAI 2021).

An ``s2t`` adapter maps a student block's output to the teacher's width, a ``t2s``
adapter the teacher's width to the next student block's. Both are linear, so a trained
``s2t`` followed by ``t2s`` folds into one 1x1 conv for the exported student.
"""

from __future__ import annotations

import torch
from torch import nn

from kdforge.errors import ConfigError

__all__ = ["identity_conv1x1", "fold_adapters"]


def identity_conv1x1(
    in_ch: int, out_ch: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> nn.Conv2d:
    """A 1x1 conv with bias, initialised to the identity on the first ``min(in_ch, out_ch)`` channels.

    Weight ``W[i, i] = 1`` for ``i < min(in_ch, out_ch)``, all other weights and the bias 0:
    equal widths reproduce the input exactly; a wider output zero-pads the extra
    channels; a narrower one keeps the first ``out_ch`` input channels (truncates).
    """
    for name, v in (("in_ch", in_ch), ("out_ch", out_ch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"identity_conv1x1: {name} must be a positive integer, got {v!r}")
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=True, device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.zero_()
        n = min(in_ch, out_ch)
        conv.weight[:n, :n, 0, 0] = torch.eye(n, device=conv.weight.device, dtype=conv.weight.dtype)
        conv.bias.zero_()
    return conv


def _check_pointwise(conv: object, what: str) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"fold_adapters: {what} must be an nn.Conv2d, got {type(conv).__name__}")
    bad = []
    if tuple(conv.kernel_size) != (1, 1):
        bad.append(f"kernel_size={tuple(conv.kernel_size)}")
    if tuple(conv.stride) != (1, 1):
        bad.append(f"stride={tuple(conv.stride)}")
    if conv.groups != 1:
        bad.append(f"groups={conv.groups}")
    # "valid" and "same" both mean no padding for a 1x1 kernel.
    if not isinstance(conv.padding, str) and tuple(conv.padding) != (0, 0):
        bad.append(f"padding={tuple(conv.padding)}")
    if bad:
        raise ConfigError(
            f"fold_adapters: {what} must be a 1x1 conv with stride 1, groups 1 and no padding; got {', '.join(bad)}"
        )
    return conv


def fold_adapters(s2t: nn.Conv2d, t2s: nn.Conv2d) -> nn.Conv2d:
    """The single 1x1 conv equal to ``t2s(s2t(x))``.

    ``W = W_t2s @ W_s2t``, ``b = W_t2s @ b_s2t + b_t2s`` (a missing bias counts as 0),
    computed in float64 and stored in ``t2s``'s dtype and device. The result always has
    a bias. Raises :class:`ConfigError` unless both are 1x1/stride 1/groups 1/unpadded
    and ``s2t.out_channels == t2s.in_channels``.
    """
    _check_pointwise(s2t, "s2t")
    _check_pointwise(t2s, "t2s")
    if s2t.out_channels != t2s.in_channels:
        raise ConfigError(
            f"fold_adapters: widths do not chain: s2t gives {s2t.out_channels} channels, "
            f"t2s takes {t2s.in_channels}"
        )
    dev, dt = t2s.weight.device, t2s.weight.dtype
    with torch.no_grad():
        w1 = s2t.weight[:, :, 0, 0].to(dev, torch.float64)
        w2 = t2s.weight[:, :, 0, 0].to(dev, torch.float64)
        zero = torch.zeros((), device=dev, dtype=torch.float64)
        b1 = s2t.bias.to(dev, torch.float64) if s2t.bias is not None else zero.expand(w1.shape[0])
        b2 = t2s.bias.to(dev, torch.float64) if t2s.bias is not None else zero.expand(w2.shape[0])
        folded = nn.Conv2d(s2t.in_channels, t2s.out_channels, kernel_size=1, bias=True, device=dev, dtype=dt)
        folded.weight.copy_((w2 @ w1)[:, :, None, None].to(dt))
        folded.bias.copy_((w2 @ b1 + b2).to(dt))
    return folded
