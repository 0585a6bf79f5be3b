"""optim.lr_groups: per-parameter-name learning rates, scheduled from each group's own rate."""

import pytest
import torch
from torch import nn

from kdforge.config import OptimConfig, ScheduleConfig, config_from_dict
from kdforge.engine.optim import build_optimizer, build_scheduler, lr_factor, parameter_groups
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
    net = _net()
    opt = build_optimizer(list(net.named_parameters()), OptimConfig(name="sgd", lr=0.1, lr_groups={"1.*": 0.02}))
    sched_cfg = ScheduleConfig(name="cosine", epochs=4, min_lr=0.001)
    sched = build_scheduler(opt, sched_cfg, steps_per_epoch=5)
    for _ in range(7):
        opt.step()
        sched.step()
    for group, base in zip(opt.param_groups, (0.1, 0.02)):
        assert group["lr"] == pytest.approx(base * lr_factor(sched_cfg, 7, 5, base))
    # the floor is min_lr for each group, not a fraction of the other group's rate
    for _ in range(20):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])


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
