"""Optimizers and per-step learning-rate schedules (multi-step, cosine, constant; linear warm-up)."""

from __future__ import annotations

import math

import torch

from kdforge.config import OptimConfig, ScheduleConfig


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
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


def build_scheduler(optimizer, cfg: ScheduleConfig, steps_per_epoch: int, base_lr: float):
    """A LambdaLR stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, base_lr)
    )
