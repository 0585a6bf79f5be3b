"""SIGTERM (pre-emption, `kill`) and Ctrl-C during training: finish the step, save, then stop."""

from __future__ import annotations

import signal
import threading


class RunInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving checkpoints/last.pt; `--resume` continues it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Within the block, SIGTERM/SIGINT set `requested` (the signal number) instead of killing the
    process; the training loop saves and stops at the end of the step. A second signal stops at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:  # asked twice: do not wait for the save
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
