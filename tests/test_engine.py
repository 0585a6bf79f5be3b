import json
import math

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.data import TensorLoader
from kdforge.engine import Trainer, evaluate, load_checkpoint, load_model
from kdforge.engine.checkpoint import atomic_save
from kdforge.engine.optim import lr_factor
from kdforge.engine.precision import resolve_precision
from kdforge.engine.run import build_zoo_model
from kdforge.errors import ConfigError
from kdforge.methods import Losses
from kdforge.models import build_model, count_macs, count_parameters


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(192, 96)


def make_cfg(tmp_path, name, **extra):
    data = {
        "name": name, "seed": 3, "output_dir": str(tmp_path),
        "data": {"batch_size": 32, "eval_batch_size": 64, "augment": {"crop_padding": 2, "hflip": True}},
        "optim": {"lr": 0.05}, "schedule": {"name": "multistep", "epochs": 3, "milestones": [2]},
        "train": {"progress": False, "tensorboard": False, "log_every": 2, "precision": "fp32"},
        "losses": {"ce": 0.5, "kd": {"weight": 0.5, "T": 4.0}},
    }
    data.update(extra)
    data["train"] = {**data["train"], "device": "cpu"}  # exact-equality tests: CPU kernels are deterministic
    return config_from_dict(data)


def make_trainer(tmp_path, name, digits, **extra):
    train, test = digits
    cfg = make_cfg(tmp_path, name, **extra)
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    torch.manual_seed(123)  # the same random teacher in every trainer
    teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet14"}}).student, 10, 1, "teacher")
    losses = Losses.from_config(cfg.losses)
    return Trainer(student, losses, train, test, teacher=teacher, config=cfg, run_dir=tmp_path / name)


def test_resume_reaches_the_same_weights(tmp_path, digits):
    full = make_trainer(tmp_path, "full", digits)
    full.fit()
    first = make_trainer(tmp_path, "split", digits)
    first.fit(until_epoch=2)
    assert load_checkpoint(tmp_path / "split", "last")["state"]["epoch"] == 2
    torch.manual_seed(999)  # resume must not depend on the process's RNG at start
    second = make_trainer(tmp_path, "split", digits)
    second.fit(resume=True)
    for (name, a), b in zip(full.student.state_dict().items(), second.student.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["train_loss"] for r in full.state.history] == [r["train_loss"] for r in second.state.history]


def test_resume_restores_every_rng_to_the_checkpoints_state(tmp_path, digits):
    """After --resume the torch, NumPy and Python generators are where the checkpoint left them (augmentation,
    dropout and samplers then continue the interrupted run), whatever the process drew before."""
    import random

    import numpy as np

    from kdforge.engine.training_checkpoint import resume

    make_trainer(tmp_path, "rng", digits).fit(until_epoch=1)
    saved = load_checkpoint(tmp_path / "rng", "last")["rng"]
    trainer = make_trainer(tmp_path, "rng", digits)
    trainer.prepare()
    torch.manual_seed(999), np.random.seed(999), random.seed(999)  # a process that drew other numbers first
    resume(trainer)
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    name, keys, pos, *_ = np.random.get_state()
    assert name == saved["numpy"][0] and np.array_equal(keys, saved["numpy"][1].numpy()) and pos == saved["numpy"][2]
    assert random.getstate() == saved["python"]


def test_teacher_frozen_and_run_folder_complete(tmp_path, digits):
    trainer = make_trainer(tmp_path, "run", digits)
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    summary = trainer.fit()
    for key, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN statistics untouched
    assert not trainer.teacher.training
    assert all(p.grad is None for p in trainer.teacher.parameters())
    run = tmp_path / "run"
    for file in ["config.yaml", "log.jsonl", "summary.json", "curves.png", "checkpoints/last.pt",
                 "checkpoints/best.pt"]:
        assert (run / file).is_file(), file
    assert json.loads((run / "summary.json").read_text()) == summary
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert {"train_ce", "train_kd", "eval_top1", "lr"} <= set(epochs[0])
    # the summary's accuracy equals an independent evaluation of the saved last checkpoint
    model, _ = load_model(run, "last")
    loader = TensorLoader(digits[1], 50, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0)
    metrics = evaluate(model, loader, resolve_precision("fp32", False, torch.device("cpu")))
    assert metrics["top1"] == pytest.approx(summary["top1_last"])
    best = load_checkpoint(run, "best")
    assert best["state"]["best_top1"] == max(e["eval_top1"] for e in epochs)
    # size and cost of the student as a fresh zoo model counts them, at the data's image size
    plain = build_model("resnet8", num_classes=10, in_channels=1)
    assert (summary["params"], summary["macs"]) == (count_parameters(plain), count_macs(plain, 32, 1))
    assert (summary["teacher_model"], summary["image_size"], summary["num_classes"]) == ("resnet14", 32, 10)


def test_interrupted_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": "kdforge-checkpoint/1", "value": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"format": "kdforge-checkpoint/1", "value": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["value"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_kd_without_teacher_is_an_error(tmp_path, digits):
    cfg = make_cfg(tmp_path, "x")
    with pytest.raises(ConfigError, match="need a teacher"):
        Trainer(build_zoo_model(cfg.student, 10, 1, "student"), Losses.from_config(cfg.losses),
                *digits, config=cfg)


def test_class_count_mismatch_is_an_error(tmp_path, digits):
    cfg = make_cfg(tmp_path, "x", losses={"ce": 1.0})
    student = build_zoo_model(cfg.student, 100, 1, "student")
    trainer = Trainer(student, Losses.from_config(cfg.losses), *digits, config=cfg)
    with pytest.raises(ConfigError, match="100 classes"):
        trainer.fit()


def cosine_lr(base, min_lr, t, span):
    """The cosine schedule written out: min_lr + (base - min_lr) * (1 + cos(pi t / T)) / 2, t clamped to T."""
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))


def test_lr_schedules_match_their_formulas():
    multi = config_from_dict({"schedule": {"name": "multistep", "epochs": 10, "milestones": [3, 6]}}).schedule
    assert [lr_factor(multi, e * 5, 5, 0.1) for e in [0, 2, 3, 5, 6, 9]] == [1, 1, 0.1, 0.1, 0.1 ** 2, 0.1 ** 2]
    # 5 epochs of 4 steps, 1 of linear warm-up ((step + 1) / 4 of the rate), then cosine over the 16 steps left
    base, min_lr = 0.1, 0.01
    cos = config_from_dict({"schedule": {"name": "cosine", "epochs": 5, "warmup_epochs": 1,
                                         "min_lr": min_lr}}).schedule
    for step in range(24):  # 4 steps past the end: held at min_lr
        want = base * (step + 1) / 4 if step < 4 else cosine_lr(base, min_lr, step - 4, 16)
        assert base * lr_factor(cos, step, 4, base) == pytest.approx(want, rel=1e-12, abs=1e-15), step
    # a quarter and three quarters of the way, cosine and linear decay differ by 0.1 of the range
    assert base * lr_factor(cos, 4 + 4, 4, base) == pytest.approx(min_lr + (base - min_lr) * (2 + 2 ** 0.5) / 4)
    assert base * lr_factor(cos, 4 + 12, 4, base) == pytest.approx(min_lr + (base - min_lr) * (2 - 2 ** 0.5) / 4)
    # no warm-up, min_lr 0: the factor itself is the cosine
    plain = config_from_dict({"schedule": {"name": "cosine", "epochs": 4}}).schedule
    assert [lr_factor(plain, s, 5, 0.1) for s in (5, 10, 15, 20)] == pytest.approx(
        [(1 + math.cos(math.pi / 4)) / 2, 0.5, (1 - math.cos(math.pi / 4)) / 2, 0.0], abs=1e-12)


def test_mid_epoch_stop_resumes_exactly(tmp_path, digits):
    """max_steps stops inside an epoch; the resumed run continues from the next batch of that epoch."""
    schedule = {"name": "cosine", "epochs": 3, "warmup_epochs": 0.5}
    full = make_trainer(tmp_path, "full", digits, schedule=schedule)
    full.fit()
    cut = make_trainer(tmp_path, "cut", digits, schedule=schedule,
                       train={"progress": False, "tensorboard": False, "precision": "fp32", "max_steps": 8})
    summary = cut.fit()
    assert summary["steps"] == 8 and summary["epochs"] == 8 / 6  # 192 images / batch 32 = 6 steps per epoch
    assert summary["top1_last"] is not None  # the stopped run is evaluated
    rest = make_trainer(tmp_path, "cut", digits, schedule=schedule)
    rest.fit(resume=True)
    for (name, a), b in zip(full.student.state_dict().items(), rest.student.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "step"]
    assert steps == sorted(set(steps))  # no duplicated records after the resume


def test_resume_refuses_a_changed_config(tmp_path, digits):
    make_trainer(tmp_path, "run", digits).fit(until_epoch=1)
    changed = make_trainer(tmp_path, "run", digits, optim={"lr": 0.1})
    with pytest.raises(ConfigError, match=r"optim.lr \(0.05 -> 0.1\)"):
        changed.fit(resume=True)


def test_overwrite_keeps_the_old_run_when_the_new_config_is_wrong(tmp_path):
    from kdforge.engine import train_from_config
    from kdforge.errors import KDForgeError

    cfg = make_cfg(tmp_path, "keep", losses={"ce": 1.0}, train={"progress": False, "tensorboard": False,
                                                                 "max_steps": 2, "precision": "fp32"})
    train_from_config(cfg)
    bad = make_cfg(tmp_path, "keep", losses={"ce": 1.0}, data={"batch_size": 5000})  # found only at set-up
    with pytest.raises(KDForgeError, match="batch_size=5000 is larger than the training set"):
        train_from_config(bad, overwrite=True)
    assert (tmp_path / "keep" / "checkpoints" / "last.pt").is_file()


def test_teacher_with_other_class_count_is_a_clear_error(tmp_path):
    from kdforge.engine import train_from_config
    from kdforge.errors import CheckpointError

    base = {"losses": {"ce": 1.0}, "train": {"progress": False, "tensorboard": False, "max_steps": 1}}
    teacher = make_cfg(tmp_path, "t3", **base, data={"options": {"channels": 3}})
    train_from_config(teacher)
    student = make_cfg(tmp_path, "s", teacher={"checkpoint": str(tmp_path / "t3")},
                       train={"progress": False, "tensorboard": False, "max_steps": 1})
    with pytest.raises(CheckpointError, match="in_channels=3"):
        train_from_config(student)


def test_all_zero_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="every weight is 0"):
        Losses.from_config({"ce": 0, "kd": 0.0})


def test_warmup_never_exceeds_the_base_rate():
    cfg = config_from_dict({"schedule": {"name": "constant", "epochs": 2, "warmup_epochs": 0.5}}).schedule
    factors = [lr_factor(cfg, step, 11, 0.1) for step in range(22)]
    assert max(factors) == 1.0 and factors[:5] == pytest.approx([(s + 1) / 5.5 for s in range(5)])
