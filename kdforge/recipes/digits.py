"""The built-in digits settings every recipe starts from when it is given no base config."""

from __future__ import annotations

import copy
from typing import Any

from kdforge.config import merge_configs

#: data, optimizer, schedule and logging of the quickstart's runs; the recipes' digits defaults change
#: only what they must (NetGraft's plain VGGs: Adam, 15 epochs)
DIGITS_BASE: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64, "augment": {"crop_padding": 2, "hflip": False}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "epochs": 8, "warmup_epochs": 0.5},
    "train": {"log_every": 10},
}


def digits_base(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fresh copy of `DIGITS_BASE` with `changes` merged in (sections merge key by key)."""
    return merge_configs(copy.deepcopy(DIGITS_BASE), copy.deepcopy(changes or {}))
