import pytest

from kdforge.config import RunConfig, config_from_dict, config_to_dict, load_config
from kdforge.errors import ConfigError


def test_defaults_and_yaml_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\noptim:\n  lr: 0.1\nschedule: {epochs: 3, milestones: [1, 2]}\n")
    cfg = load_config(path, ["optim.weight_decay=1e-4", "losses.kd=0.9", "teacher.checkpoint=runs/t"])
    assert cfg.name == "x" and cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 1e-4
    assert cfg.optim.momentum == RunConfig().optim.momentum  # untouched default
    assert cfg.schedule.milestones == [1, 2] and cfg.schedule.epochs == 3
    assert cfg.losses == {"kd": 0.9}
    assert cfg.teacher.checkpoint == "runs/t" and cfg.teacher.model is None


def test_round_trip():
    cfg = config_from_dict({"optim": {"betas": [0.8, 0.9]}, "teacher": {"model": "resnet20"}})
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg and again.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("data, fragment", [
    ({"optim": {"lrr": 0.1}}, "optim.lrr"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"optim": {"name": "lion"}}, "optim.name"),
    ({"schedule": {"milestones": [1, "x"]}}, "schedule.milestones[1]"),
    ({"train": {"compile": "yes"}}, "train.compile"),
    ({"data": {"batch_size": 6.5}}, "data.batch_size"),
    ({"dat": {}}, "dat"),
])
def test_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert fragment in str(info.value)


def test_unknown_key_suggests_and_lists():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"optim": {"momentun": 0.9}})
    message = str(info.value)
    assert "momentum" in message and "Allowed keys" in message


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"precision": "fp8"}})
    assert "'bf16'" in str(info.value) and "'fp32'" in str(info.value)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(None, ["optim.lr"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_several_files_merge_in_order(tmp_path):
    pair = tmp_path / "pair.yaml"
    pair.write_text("student: {model: resnet8x4}\noptim: {lr: 0.05, momentum: 0.8}\nlosses: {ce: 0.1, kd: 0.9}\n")
    method = tmp_path / "method.yaml"
    method.write_text("optim: {lr: 0.01}\nlosses: {ce: 1.0, at: 1000}\n")
    cfg = load_config([pair, method])
    assert cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.8  # merged key by key
    assert cfg.student.model == "resnet8x4"
    assert cfg.losses == {"ce": 1.0, "at": 1000}  # replaced whole, not merged


def test_loss_specs_are_checked_when_the_config_is_built():
    """An unknown method, parameter or weight fails in config_from_dict, as any other section does."""
    with pytest.raises(ConfigError, match="losses.kdd: unknown method 'kdd'"):
        config_from_dict({"losses": {"kdd": 1.0}})
    with pytest.raises(ConfigError, match="losses.kd.TT: method 'kd' has no parameter 'TT'"):
        config_from_dict({"losses": {"kd": {"TT": 2}}})
    with pytest.raises(ConfigError, match="losses.kd.weight"):
        config_from_dict({"losses": {"kd": {"weight": "heavy"}}})
    assert config_from_dict({"losses": {"kd": {"weight": 0.9, "T": 2}}}).losses == {"kd": {"weight": 0.9, "T": 2}}


def test_a_saved_config_that_no_longer_validates_is_compared_as_saved():
    """with_current_defaults leaves a run's config alone when today's kdforge refuses it (a method since gone)."""
    from kdforge.config import with_current_defaults

    saved = {"losses": {"gone_method": 1.0}, "seed": 3}
    assert with_current_defaults(saved) is saved
