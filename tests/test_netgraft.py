"""NetGraft's grafted network, the folded student and the two-stage recipe (Shen et al., AAAI 2021)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from kdforge.errors import ConfigError
from kdforge.graft.adapter_pairs import identity_conv1x1
from kdforge.graft.network import GraftedNet
from kdforge.models import build_model

W = {"width": 0.25}  # a quarter-width VGG16 keeps these tests fast


def _pair(student: str = "vgg16_nobn", seed: int = 0):
    torch.manual_seed(seed)
    teacher = build_model("vgg16_nobn", num_classes=10, **W).eval()
    student = build_model(student, num_classes=10, **W)
    return teacher, student


def _randomise(net: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("shared", [0, 3])
def test_teacher_copied_blocks_and_identity_adapters_reproduce_the_teacher_exactly(shared):
    teacher, student = _pair()
    student.load_state_dict(teacher.state_dict())
    net = GraftedNet(teacher, student, shared=shared).eval()
    with torch.no_grad():
        want = teacher(X)
        for r in range(1, len(net.units) + 1):
            for graft in itertools.combinations(net.units, r):
                net.grafted = list(graft)
                assert torch.equal(net(X), want), graft


def test_one_grafted_unit_is_the_teacher_with_that_block_replaced():
    """Written out module by module: teacher layers 1-3, student layer4 + s2t, teacher layer5 and head."""
    teacher, student = _pair("vgg16_nobn_thin")
    net = GraftedNet(teacher, student, shared=3, graft=["layer4"]).eval()
    _randomise(net.s2t)
    with torch.no_grad():
        h = teacher.layer3(teacher.layer2(teacher.layer1(X)))
        h = net.s2t["layer4"](student.layer4(h))
        h = teacher.layer5(h)
        want = teacher.fc(teacher.fc_bn(teacher.fc_hidden(torch.flatten(h, 1))))
        assert torch.allclose(net(X), want, atol=1e-6)
        net.grafted = ["layer5", "head"]  # t2s before each later unit
        h = teacher.layer4(teacher.layer3(teacher.layer2(teacher.layer1(X))))
        h = net.s2t["layer5"](student.layer5(net.t2s["layer5"](h)))
        want = student.fc(student.fc_hidden(torch.flatten(net.t2s["head"](h), 1)))
        assert torch.allclose(net(X), want, atol=1e-6)


def test_adapter_shapes_come_from_a_dry_run():
    teacher, student = _pair("vgg16_nobn_thin")
    net = GraftedNet(teacher, student, shared=3)
    assert net.units == ["layer4", "layer5", "head"]
    # quarter width: teacher blocks 4-5 have 128 channels, the student's 64
    assert {k: (m.in_channels, m.out_channels) for k, m in net.s2t.items()} == {"layer4": (64, 128), "layer5": (64, 128)}
    assert {k: (m.in_channels, m.out_channels) for k, m in net.t2s.items()} == {"layer5": (128, 64), "head": (128, 64)}


def test_only_the_grafted_units_train_and_the_teacher_stays_in_eval_mode():
    teacher, student = _pair("vgg16_nobn_thin")
    net = GraftedNet(teacher, student, shared=3, graft=["layer5"])
    net.train()
    stats = teacher.fc_bn.running_mean.clone()
    net(X).square().sum().backward()
    assert torch.equal(teacher.fc_bn.running_mean, stats) and not teacher.training
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    want = {n for n, _ in net.named_parameters()
            if n.startswith(("student.layer5.", "s2t.layer5.", "t2s.layer5."))}
    assert with_grad == trainable == want
    assert set(net.unit_state_keys("layer5")) == want  # no buffers in these VGG blocks


def test_adopt_teacher_copies_the_teacher_and_the_shared_blocks():
    teacher, student = _pair("vgg16_nobn_thin")
    _randomise(teacher, seed=3)
    torch.manual_seed(9)
    net = GraftedNet(build_model("vgg16_nobn", num_classes=10, **W), student, shared=3)
    net.adopt_teacher(teacher)
    for key, value in teacher.state_dict().items():
        assert torch.equal(net.teacher.state_dict()[key], value)
        if key.startswith(("layer1.", "layer2.", "layer3.")):
            assert torch.equal(net.student.state_dict()[key], value)
    assert not torch.equal(net.student.layer4[0].conv.weight[:, :, 0, 0], teacher.layer4[0].conv.weight[:64, :, 0, 0])


def test_folding_preserves_the_logits_of_the_whole_chain():
    teacher, student = _pair("vgg16_nobn_thin")
    net = GraftedNet(teacher, student, shared=3).eval()
    _randomise(net.s2t, seed=2)
    _randomise(net.t2s, seed=4)
    folded = net.fold().eval()
    with torch.no_grad():
        want, got = net(X), folded(X)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # the student alone: no teacher part, a 1x1 conv (64 -> 64) after layer4 and layer5
    assert sum(p.numel() for p in folded.parameters()) == (
        sum(p.numel() for p in student.parameters()) + 2 * (64 * 64 + 64))
    assert folded.zoo_record["name"] == "adapted"
    rebuilt = build_model("adapted", **{k: v for k, v in folded.zoo_record.items() if k != "name"}["options"],
                          num_classes=10)
    rebuilt.load_state_dict(folded.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(X), got)


def test_fold_needs_every_unit_grafted():
    teacher, student = _pair("vgg16_nobn_thin")
    with pytest.raises(ConfigError, match=r"\['head'\] is still the teacher's"):
        GraftedNet(teacher, student, shared=3, graft=["layer4", "layer5"]).fold()


def test_any_zoo_pair_cut_into_the_same_number_of_blocks_by_stage_names():
    torch.manual_seed(0)
    teacher = build_model("resnet20", num_classes=10).eval()
    student = build_model("resnet8", num_classes=10)
    net = GraftedNet(teacher, student, shared=1).eval()
    assert net.units == ["layer2", "layer3", "head"]
    student_copy = build_model("resnet20", num_classes=10)
    student_copy.load_state_dict(teacher.state_dict())
    exact = GraftedNet(teacher, student_copy, shared=1).eval()
    with torch.no_grad():
        assert torch.equal(exact(X), teacher(X))
        assert net(X).shape == (4, 10)
    three = GraftedNet(build_model("vgg13", num_classes=10), build_model("vgg8", num_classes=10),
                       teacher_blocks=["layer2", "layer4", "layer5"], student_blocks=["layer2", "layer3", "layer5"])
    assert three.units == ["layer2", "layer3", "layer5", "head"]
    assert three.eval()(X).shape == (4, 10)


def test_bad_cuts_are_clear_errors():
    teacher, student = _pair("vgg16_nobn_thin")
    with pytest.raises(ConfigError, match="same number of blocks"):
        GraftedNet(teacher, student, student_blocks=["layer3", "layer5"])
    with pytest.raises(ConfigError, match="not a stage of the teacher"):
        GraftedNet(teacher, student, teacher_blocks=["layer3", "conv9"])
    with pytest.raises(ConfigError, match="last block must end at the last stage"):
        GraftedNet(teacher, student, teacher_blocks=["layer3", "layer4"], student_blocks=["layer3", "layer4"])
    with pytest.raises(ConfigError, match=r"shared: .*0\.\.5"):
        GraftedNet(teacher, student, shared=6)
    with pytest.raises(ConfigError, match="Did you mean: layer5"):
        GraftedNet(teacher, student, shared=3, graft=["layer6"])
    with pytest.raises(ConfigError, match="must be the teacher's"):
        GraftedNet(teacher, student, shared=4)
    with pytest.raises(ConfigError, match="same spatial size"):
        GraftedNet(teacher, build_model("vgg13", num_classes=10))


# ---------------------------------------------------------------- engine and recipe

def _teacher_run(tmp_path):
    from kdforge.config import config_from_dict
    from kdforge.engine.run import train_from_config

    cfg = config_from_dict({
        "name": "teacher", "output_dir": str(tmp_path), "data": {"name": "digits", "batch_size": 64},
        "student": {"model": "vgg16_nobn", "options": W}, "losses": {"ce": 1.0},
        "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"max_steps": 3, "progress": False, "tensorboard": False}})
    train_from_config(cfg)
    return tmp_path / "teacher"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from kdforge.recipes.netgraft import DIGITS_BASE, GraftSchedule, run_netgraft_pipeline

    tmp = tmp_path_factory.mktemp("netgraft")
    teacher = _teacher_run(tmp)
    base = {**DIGITS_BASE, "train": {"tensorboard": False}, "schedule": {"name": "constant", "epochs": 1}}
    schedule = GraftSchedule(stage1_epochs=[1], stage2_epochs=[1])
    kwargs = dict(base=base, shots=[2], seeds=[0], output_dir=tmp / "ng", student_options=W, schedule=schedule,
                  progress=False, kd_epochs=1)
    result = run_netgraft_pipeline(teacher, **kwargs)
    return tmp, teacher, result, kwargs


def test_recipe_runs_both_stages_as_engine_runs_and_reports_the_exported_students_test_accuracy(recipe):
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

    tmp, _, result, _ = recipe
    folder = tmp / "ng" / "shots2" / "seed0"
    runs = ["stage1-layer4", "stage1-layer5", "stage1-head", "stage2-to-layer5", "stage2-to-head", "kd-shots"]
    for name in runs:
        summary = json.loads((folder / name / "summary.json").read_text())
        assert summary["train_images"] == 20  # 2 label-free images per digit
        if name.startswith("stage1-"):  # one unit trains, the rest is frozen
            unit = name[len("stage1-"):]
            net = build_model("grafted", num_classes=10, in_channels=1, teacher_options=W, student_options=W)
            keys = net.unit_state_keys(unit)
            assert summary["trainable_params"] == sum(net.state_dict()[k].numel() for k in keys)
            assert summary["trainable_params"] < summary["params"]
    rows = {(r["method"], r["shots"]): r for r in result["rows"]}
    student = evaluate_checkpoint(folder / "student.pt", split="test")
    assert student["model"] == "adapted" and student["n"] == 360  # the test split, not the few-shot set
    assert rows[("netgraft", 2)]["top1"] == [student["top1"]]
    kd = evaluate_checkpoint(folder / "kd-shots", "last", split="test")
    assert rows[("kd-shots", 2)]["top1"] == [kd["top1"]]
    # the control: KD on the same images, the student's first 3 blocks the teacher's (copied, frozen), the rest
    # trained end to end from scratch
    from kdforge.engine.checkpoint import load_checkpoint

    control = json.loads((folder / "kd-shots-shared" / "summary.json").read_text())
    net = build_model("grafted", num_classes=10, in_channels=1, teacher_options=W, student_options=W,
                      graft=net.units)
    trained_keys = [k for u in net.units for k in net.unit_state_keys(u)]
    assert control["trainable_params"] == sum(net.state_dict()[k].numel() for k in trained_keys)
    import yaml

    assert yaml.safe_load((folder / "kd-shots-shared" / "config.yaml").read_text())["losses"] == \
        {"kd": {"weight": 1.0, "T": 4.0}}
    assert control["train_images"] == 20
    teacher = load_checkpoint(tmp / "teacher", "best")["student"]
    after = load_checkpoint(folder / "kd-shots-shared", "last")["student"]
    shared = [k for k in teacher if k.startswith(("layer1.", "layer2.", "layer3."))]
    assert shared and all(torch.equal(after[f"teacher.{k}"], teacher[k]) for k in shared)  # frozen, the teacher's
    assert summary["params"] > control["trainable_params"]
    start = build_model("grafted", num_classes=10, in_channels=1, teacher_options=W, student_options=W,
                        graft=net.units).state_dict()
    assert any(not torch.equal(after[k], start[k]) for k in trained_keys)  # the rest did train
    assert rows[("kd-shots-shared", 2)]["top1"] == [evaluate_checkpoint(folder / "kd-shots-shared", "last",
                                                                         split="test")["top1"]]
    full = evaluate_checkpoint(tmp / "ng" / "kd-full" / "seed0", "last", split="test")
    assert rows[("kd-full", None)]["top1"] == [full["top1"]]
    assert "NetGraft" in result["table"] and (tmp / "ng" / "results.md").is_file()


def test_stage2_starts_from_the_previous_chain_and_the_new_units_stage1_weights(recipe):
    from kdforge.engine.checkpoint import load_checkpoint

    tmp, _, _, _ = recipe
    folder = tmp / "ng" / "shots2" / "seed0"
    init = torch.load(folder / "inits" / "to-head.pt", weights_only=False)["student"]
    chain = load_checkpoint(folder / "stage2-to-layer5", "last")["student"]
    unit = load_checkpoint(folder / "stage1-head", "last")["student"]
    head_keys = {"student.fc_hidden.weight", "student.fc_hidden.bias", "student.fc.weight", "student.fc.bias",
                 "t2s.head.weight", "t2s.head.bias"}
    for key, value in init.items():
        assert torch.equal(value, unit[key] if key in head_keys else chain[key]), key
    # stage 1 trains the unit alone: the teacher part is the teacher's, untouched
    teacher = load_checkpoint(tmp / "teacher", "best")["student"]
    stage1 = load_checkpoint(folder / "stage1-layer4", "last")["student"]
    assert all(torch.equal(stage1[f"teacher.{k}"], v) for k, v in teacher.items())


def test_recipe_rerun_trains_nothing(recipe):
    from kdforge.recipes.netgraft import run_netgraft_pipeline

    tmp, teacher, result, kwargs = recipe
    logs = sorted((tmp / "ng").rglob("log.jsonl"))
    before = [p.stat().st_mtime_ns for p in logs]
    again = run_netgraft_pipeline(teacher, **kwargs)
    assert [p.stat().st_mtime_ns for p in logs] == before
    assert again["rows"] == result["rows"]


def test_export_of_a_grafted_run_folds_the_adapters_and_checks_the_logits(recipe, tmp_path):
    from kdforge.deploy.export import export_model

    tmp, _, _, _ = recipe
    folder = tmp / "ng" / "shots2" / "seed0"
    out = export_model(folder / "stage2-to-head", out=tmp_path / "s.pt")
    assert out["model"] == "adapted" and 0 < out["max_abs_diff"] < 1e-3
    with pytest.raises(ConfigError, match="still the teacher's"):
        export_model(folder / "stage1-layer4", out=tmp_path / "t.pt")
    assert not (tmp_path / "t.pt").exists()


def test_plan_scales_batch_and_stage1_rates_and_selects_on_the_holdout(recipe):
    from kdforge.recipes.netgraft import DIGITS_BASE, GraftSchedule, plan_netgraft

    tmp, teacher, _, _ = recipe
    schedule = GraftSchedule(lr_blocks=[1e-3, 2e-3, 3e-3], lr_adapters=1e-2)
    plan = plan_netgraft(teacher, base=DIGITS_BASE, shots=[5], seeds=[1], output_dir=tmp / "plan", student="vgg16_nobn_thin",
                         student_options=W, shared=3, teacher_blocks=None, student_blocks=None, schedule=schedule,
                         select="holdout", holdout=2, baselines=False, kd_epochs=None)
    group = plan.groups[(5, 1)]
    s1 = group.stage1
    assert s1["layer4"]["data"]["batch_size"] == 32  # int(64 * 5 / 10)
    assert s1["layer5"]["optim"]["lr"] == pytest.approx(2e-3 * 0.5)
    assert s1["layer5"]["optim"]["lr_groups"] == {"s2t.layer5.*": pytest.approx(5e-3), "t2s.layer5.*": pytest.approx(5e-3)}
    assert s1["layer4"]["optim"]["lr_groups"] == {"s2t.layer4.*": pytest.approx(5e-3)}  # no t2s before the first unit
    assert s1["head"]["schedule"]["epochs"] == 60
    assert s1["head"]["data"]["few_shot"] == {"shots": 5, "seed": 1, "holdout": 2, "labels": False}
    assert plan.which == "best"
    stage2 = [run.config for run in group.stage2]
    assert [r["student"]["options"]["graft"] for r in stage2] == [["layer4", "layer5"], ["layer4", "layer5", "head"]]
    assert [r["optim"]["lr"] for r in stage2] == [1e-4, 1e-4]
    with pytest.raises(ConfigError, match="which the recipe decides"):
        plan_netgraft(teacher, base={**DIGITS_BASE, "losses": {"ce": 1}}, shots=[5], seeds=[1], output_dir=tmp,
                      student="vgg16_nobn_thin", student_options=W, shared=3, teacher_blocks=None,
                      student_blocks=None, schedule=schedule, select="last", holdout=0, baselines=False, kd_epochs=None)


def test_grafted_run_needs_a_teacher(tmp_path):
    from kdforge.config import config_from_dict
    from kdforge.engine.run import train_from_config

    cfg = config_from_dict({"name": "g", "output_dir": str(tmp_path), "student": {"model": "grafted"},
                            "losses": {"ce": 1.0}, "train": {"progress": False}})
    with pytest.raises(ConfigError, match="runs inside the teacher"):
        train_from_config(cfg)


def test_identity_adapter_reference():
    conv = identity_conv1x1(3, 3)
    assert torch.equal(conv(X[:, :3]), X[:, :3])
