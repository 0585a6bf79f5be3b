"""Watching the loss values for NaN/inf without stalling the device.

'stop' (default): every step records, on the device, the first step whose loss values were not
finite and which ones; the trainer reads that back where it syncs anyway (logging, before
every checkpoint, at epoch ends) and stops with a message naming them, before anything is
saved. 'skip': every step is checked at once (one device sync) and a bad step's update is
dropped.
"""

from __future__ import annotations

import torch

from kdforge.errors import KDForgeError


class NonFiniteLossError(KDForgeError, FloatingPointError):
    """A loss became NaN or infinite; the message names the loss and the step."""


class NonFiniteGuard:
    def __init__(self, mode: str, device: torch.device, dist):
        self.mode = mode
        self.device = device
        self.dist = dist
        self.skipped = 0  # steps whose update was dropped ('skip')
        self._names: list[str] | None = None
        self._first_step = torch.full((), -1, dtype=torch.long, device=device)
        self._first_bad: torch.Tensor | None = None  # which loss values, at that step

    def observe(self, names: list[str], values: torch.Tensor, step: int) -> bool:
        """Record the loss `values` (one per name) of step `step` (1-based); returns False when its
        update must be skipped ('skip')."""
        finite = torch.isfinite(values)
        if self.mode == "skip":
            ok = not self.dist.any(not bool(finite.all()), self.device)  # every rank skips together
            if not ok:
                self.skipped += 1
            return ok
        if names != self._names:  # the set of loss values changed: settle what was seen with the old one
            if self._names is not None:
                self.check(epoch=None)
            self._names, self._first_bad = names, torch.zeros(len(names), dtype=torch.bool, device=self.device)
        new = (self._first_step < 0) & ~finite.all()
        self._first_step = self._first_step.masked_fill(new, step)  # no host-to-device copy per step
        self._first_bad = torch.where(new, ~finite, self._first_bad)
        return True

    def check(self, epoch: int | None) -> None:
        """Raise NonFiniteLossError if any step so far (on any rank) had a non-finite loss value."""
        if self.mode == "skip" or self._names is None:
            return
        local = int(self._first_step.item())
        if not self.dist.any(local >= 0, self.device):
            return
        if local < 0:
            raise NonFiniteLossError("a loss became non-finite on another process (its message names it)")
        bad_names = [n for n, bad in zip(self._names, self._first_bad.tolist()) if bad]
        where = f"at step {local}" + (f" (epoch {epoch + 1})" if epoch is not None else "")
        raise NonFiniteLossError(
            f"loss(es) {', '.join(bad_names)} became non-finite {where}; nothing after the last checkpoint was "
            f"saved. Lower optim.lr or the loss's weight, use train.precision=fp32, or set train.nonfinite=skip")
