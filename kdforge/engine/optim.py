"""Optimizers and per-step learning-rate schedules (multi-step, cosine, constant; linear warm-up)."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

import torch

from kdforge.config import OptimConfig, ScheduleConfig
from kdforge.errors import ConfigError


def parameter_groups(named_params, cfg: OptimConfig) -> list[dict]:
    """Trainable parameters split by `cfg.lr_groups` ({glob on names: lr}, first match wins).

    Parameters no pattern matches form the first group, at `cfg.lr`. A pattern that
    matches no trainable parameter is an error (most likely a typo).
    """
    patterns = list(cfg.lr_groups)
    members: list[list[torch.nn.Parameter]] = [[] for _ in range(len(patterns) + 1)]
    for name, p in named_params:
        if p.requires_grad:
            hit = next((i for i, pat in enumerate(patterns) if fnmatchcase(name, pat)), None)
            members[0 if hit is None else hit + 1].append(p)
    unused = [pat for pat, group in zip(patterns, members[1:]) if not group]
    if unused:
        raise ConfigError(f"optim.lr_groups: {', '.join(map(repr, unused))} match(es) no trainable parameter "
                          f"(student parameters are named as in the model, a method's as losses.<key>.<name>)")
    groups = [{"params": members[0], "lr": cfg.lr}] if members[0] or not patterns else []
    return groups + [{"params": group, "lr": cfg.lr_groups[pat]} for pat, group in zip(patterns, members[1:])]


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """`params`: parameters (one group at `cfg.lr`) or (name, parameter) pairs, grouped by `cfg.lr_groups`."""
    params = list(params)
    if params and isinstance(params[0], tuple):
        params = parameter_groups(params, cfg)
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.name == "dot":
        from kdforge.engine.dot import DistillationOrientedSGD

        return DistillationOrientedSGD(params, lr=cfg.lr, momentum=cfg.momentum, delta=cfg.dot_delta,
                                       weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, base_lr: float) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps."""
    epoch = step / steps_per_epoch  # fractional epoch
    warmup = cfg.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return min(1.0, (step + 1) / (warmup * steps_per_epoch))
    if cfg.name == "multistep":
        done = int(step // steps_per_epoch)
        return cfg.gamma ** sum(done >= m for m in cfg.milestones)
    if cfg.name == "cosine":
        span = max(cfg.epochs - warmup, 1e-8)
        progress = min(max(epoch - warmup, 0.0) / span, 1.0)
        floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer, cfg: ScheduleConfig, steps_per_epoch: int):
    """A LambdaLR stepped once per optimizer step; each parameter group follows the schedule from its own rate."""
    def factor(base_lr: float):
        return lambda step: lr_factor(cfg, step, steps_per_epoch, base_lr)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor(g["lr"]) for g in optimizer.param_groups])
