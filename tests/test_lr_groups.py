"""optim.lr_groups: per-parameter-name learning rates, scheduled from each group's own rate."""

import math

import pytest
import torch
from torch import nn

from kdforge.config import OptimConfig, ScheduleConfig, config_from_dict
from kdforge.engine.optim import build_optimizer, build_scheduler, parameter_groups
from kdforge.errors import ConfigError


def _net():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    net[1].bias.requires_grad_(False)
    return net


def test_first_matching_pattern_sets_the_rate_and_frozen_parameters_are_left_out():
    net = _net()
    cfg = OptimConfig(name="adam", lr=0.1, lr_groups={"1.*": 0.01, "*.bias": 0.5})
    groups = parameter_groups(list(net.named_parameters()), cfg)
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert by_id == {id(net[0].weight): 0.1, id(net[1].weight): 0.01, id(net[0].bias): 0.5}
    opt = build_optimizer(list(net.named_parameters()), cfg)
    assert sorted(g["lr"] for g in opt.param_groups) == [0.01, 0.1, 0.5]


def test_a_pattern_matching_nothing_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"'adapters\.\*'.*no trainable parameter"):
        parameter_groups(list(_net().named_parameters()), OptimConfig(lr_groups={"adapters.*": 0.1}))
    # a frozen parameter does not count as a match
    with pytest.raises(ConfigError, match="1.bias"):
        parameter_groups(list(_net().named_parameters()), OptimConfig(lr_groups={"1.bias": 0.1}))


def test_plain_parameters_make_one_group_as_before():
    net = _net()
    opt = build_optimizer(net.parameters(), OptimConfig(name="sgd", lr=0.2))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 3


def test_each_group_follows_the_cosine_schedule_from_its_own_rate():
    """Per group, written out: a linear warm-up to its own rate, then min_lr + (rate - min_lr) (1 + cos(pi t / T)) / 2."""
    net = _net()
    opt = build_optimizer(list(net.named_parameters()), OptimConfig(name="sgd", lr=0.1, lr_groups={"1.*": 0.02}))
    min_lr, per_epoch = 0.001, 5
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", epochs=5, warmup_epochs=1, min_lr=min_lr),
                            steps_per_epoch=per_epoch)
    span = 4 * per_epoch  # cosine steps after the warm-up epoch

    def want(base, step):
        if step < per_epoch:
            return base * (step + 1) / per_epoch
        t = min(step - per_epoch, span)
        return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * t / span))

    # steps 10 and 20 (1/4, 3/4 of the cosine) tell it from a linear decay; 3 steps past the end: held at min_lr
    for step in range(span + per_epoch + 3):
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([want(0.1, step), want(0.02, step)],
                                                                    rel=1e-12), step
        opt.step()
        sched.step()
    # the floor is min_lr for each group, not a fraction of the other group's rate
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([min_lr, min_lr])


def test_config_checks_rates():
    with pytest.raises(ConfigError, match=r"optim.lr_groups.*must be at least 0"):
        config_from_dict({"optim": {"lr_groups": {"x.*": -1}}})
    with pytest.raises(ConfigError, match="expected a number"):
        config_from_dict({"optim": {"lr_groups": {"x.*": "fast"}}})
    assert config_from_dict({"optim": {"lr_groups": {"x.*": "1e-3"}}}).optim.lr_groups == {"x.*": 1e-3}


def test_engine_run_uses_the_groups(tmp_path):
    from kdforge.engine.run import train_from_config

    cfg = config_from_dict({
        "name": "g", "output_dir": str(tmp_path), "data": {"name": "digits", "batch_size": 64},
        "student": {"model": "resnet8"}, "losses": {"ce": 1.0},
        "optim": {"name": "sgd", "lr": 0.1, "lr_groups": {"fc.*": 0.0}},
        "schedule": {"name": "constant", "epochs": 1}, "train": {"max_steps": 2, "progress": False}})
    from kdforge.engine.seeding import seed_everything
    from kdforge.models import build_model

    summary = train_from_config(cfg)
    ckpt = torch.load(tmp_path / "g" / "checkpoints" / "last.pt", weights_only=False)
    # the fc had rate 0: unchanged from the seeded initialisation; the rest moved
    seed_everything(cfg.seed)
    fresh = build_model("resnet8", num_classes=10, in_channels=1).state_dict()
    assert torch.equal(ckpt["student"]["fc.weight"], fresh["fc.weight"])
    assert not torch.equal(ckpt["student"]["conv1.weight"], fresh["conv1.weight"])
    assert summary["steps"] == 2
