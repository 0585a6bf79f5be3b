"""A small resnet8 Trainer on a digits subset, 2 epochs of batch 32 in fp32 on the CPU: the run the crash-safety
and hook tests stop, kill and resume."""

import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer
from kdforge.engine.hooks import PretrainStageHook
from kdforge.engine.run import build_zoo_model
from kdforge.methods import Losses


def small_trainer(tmp_path, digits, name, method, *, seed, log_every, hooks=(), **train):
    """`method` (one Method, weight 1) trains a fresh resnet8 (torch seed 0) on `digits` (train, eval) in
    `tmp_path / name`; `train` adds `train:` settings."""
    cfg = config_from_dict({
        "name": name, "seed": seed, "output_dir": str(tmp_path),
        "data": {"batch_size": 32, "eval_batch_size": 64, "augment": {"crop_padding": 2, "hflip": True}},
        "optim": {"lr": 0.05}, "schedule": {"name": "cosine", "epochs": 2},
        "train": {"progress": False, "tensorboard": False, "log_every": log_every, "precision": "fp32",
                  "device": "cpu", **train}})
    torch.manual_seed(0)
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    return Trainer(student, Losses({method.name: method}, {method.name: 1.0}), *digits, config=cfg,
                   run_dir=tmp_path / name, hooks=hooks)


def run_pretrain_stages(trainer) -> None:
    """The stages the trainer's methods added (`PretrainStageHook`s), in order, outside `fit` (no signal handling)."""
    for hook in trainer.hooks.of_type(PretrainStageHook):
        hook.run_stage(trainer)
