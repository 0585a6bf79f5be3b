"""Nothing is selected on the test split: teachers from a run folder are its last epoch unless
asked otherwise, a validation hold-out chooses best.pt, and summaries say which file was used."""

import json
import math
import shutil

import pytest
import torch

from kdforge.config import ModelConfig, config_from_dict
from kdforge.data import load_dataset
from kdforge.data.val_split import split_validation, val_split_indices
from kdforge.engine import load_checkpoint, train_from_config
from kdforge.engine.checkpoint import atomic_save, checkpoint_source
from kdforge.engine.run import build_zoo_model, load_run_data
from kdforge.errors import CheckpointError, ConfigError

COMMON = {
    "data": {"batch_size": 128, "eval_batch_size": 256, "augment": {"crop_padding": 2, "hflip": False}},
    "optim": {"lr": 0.05}, "schedule": {"name": "cosine", "epochs": 3},
    "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "log_every": 5},
    "student": {"model": "resnet8"},
}


def run_config(tmp_path, name, **extra):
    data = json.loads(json.dumps(COMMON))
    for key, value in extra.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return config_from_dict({**data, "name": name, "output_dir": str(tmp_path)})


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A finished 3-epoch run whose best.pt differs from its last.pt (best.pt is rewritten with other weights)."""
    out = tmp_path_factory.mktemp("teacher")
    train_from_config(run_config(out, "teacher", schedule={"epochs": 1}))
    run = out / "teacher"
    best = load_checkpoint(run, "best")
    best["student"] = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in best["student"].items()}
    best.pop("path")
    atomic_save(best, run / "checkpoints" / "best.pt")
    return run


def test_a_run_folder_as_teacher_means_its_last_checkpoint(teacher_run):
    last, best = load_checkpoint(teacher_run, "last"), load_checkpoint(teacher_run, "best")
    sources: dict = {}
    model = build_zoo_model(ModelConfig(checkpoint=str(teacher_run)), 10, 1, "teacher", sources)
    for key, value in model.state_dict().items():
        assert torch.equal(value, last["student"][key]), key
    assert sources["teacher"]["which"] == "last" and sources["teacher"]["file"].endswith("last.pt")
    assert sources["teacher"]["selected_on"] is None  # a last epoch: nothing was selected
    chosen = build_zoo_model(ModelConfig(checkpoint=str(teacher_run), which="best"), 10, 1, "teacher", sources)
    for key, value in chosen.state_dict().items():
        assert torch.equal(value, best["student"][key]), key
    # without a validation split, the teacher run's best.pt was chosen on its test split: the source says so
    assert sources["teacher"] == {"file": best["path"], "which": "best", "selected_on": "test",
                                  "epoch": best["state"]["epoch"]}


def test_summary_records_the_teacher_file_and_the_split_that_chose_it(tmp_path, teacher_run):
    kd = {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}
    summary = train_from_config(run_config(tmp_path, "kd", losses=kd, teacher={"checkpoint": str(teacher_run)},
                                           train={"max_steps": 2}))
    assert summary["teacher_checkpoint"]["file"] == str(teacher_run / "checkpoints" / "last.pt")
    assert summary["teacher_checkpoint"]["which"] == "last"
    summary = train_from_config(run_config(tmp_path, "kd-best", losses=kd, train={"max_steps": 2},
                                           teacher={"checkpoint": str(teacher_run), "which": "best"}))
    assert summary["teacher_checkpoint"]["which"] == "best"
    assert summary["teacher_checkpoint"]["selected_on"] == "test"
    assert summary["student_init"] is None


def test_which_is_checked_and_a_folder_without_checkpoints_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="teacher.which"):
        config_from_dict({"teacher": {"checkpoint": "x", "which": "newest"}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "empty")
    message = str(info.value)
    assert "checkpoints/last.pt is missing" in message and message.count("last.pt") == 1


def test_validation_draw_is_class_balanced_seeded_and_disjoint():
    labels = torch.tensor([0] * 50 + [1] * 31 + [2] * 9 + [3] * 2)
    train, val = val_split_indices(labels, 0.2, seed=4)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(labels.numel()))
    assert not set(train.tolist()) & set(val.tolist())
    for k, n in ((0, 50), (1, 31), (2, 9), (3, 2)):
        expected = min(max(1, round(0.2 * n)), n - 1)  # at least one to validate on, one to train on
        assert int((labels[val] == k).sum()) == expected, k
    again, other = val_split_indices(labels, 0.2, seed=4)[1], val_split_indices(labels, 0.2, seed=5)[1]
    assert torch.equal(val, again) and not torch.equal(val, other)
    with pytest.raises(Exception, match="at least 2 per class"):
        val_split_indices(torch.tensor([0, 0, 1]), 0.5, seed=0)


def test_val_split_config_forms_and_conflicts():
    assert config_from_dict({"data": {"val_split": 0.1}}).data.val_split.fraction == 0.1
    cfg = config_from_dict({"data": {"val_split": {"fraction": 0.25, "seed": 3}}})
    assert (cfg.data.val_split.fraction, cfg.data.val_split.seed) == (0.25, 3)
    assert cfg.data.selection_split.startswith("val (0.25")
    for bad in (0.0, 1.0, 1.5, "nan"):
        with pytest.raises(ConfigError, match="data.val_split.fraction"):
            config_from_dict({"data": {"val_split": bad}})
    with pytest.raises(ConfigError, match="val_split and data.few_shot.holdout"):
        config_from_dict({"data": {"val_split": 0.1, "few_shot": {"shots": 5, "holdout": 1}}})


def test_a_validation_split_chooses_best_and_the_test_split_is_only_reported(tmp_path):
    cfg = run_config(tmp_path, "val", data={"val_split": {"fraction": 0.2, "seed": 1}})
    full = load_dataset("digits", None, "train")
    loaded = load_run_data(cfg)
    expected_train, expected_val = split_validation(full, 0.2, 1)
    assert torch.equal(loaded.train.images, expected_train.images)
    assert torch.equal(loaded.validation.labels, expected_val.labels)
    assert len(loaded.evaluation) == len(load_dataset("digits", None, "test"))
    summary = train_from_config(cfg)
    run = tmp_path / "val"
    epochs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert all({"val_top1", "eval_top1"} <= set(e) for e in epochs)
    best_val = max(e["val_top1"] for e in epochs)
    best_epoch = next(e["epoch"] for e in epochs if e["val_top1"] == best_val)  # the first epoch at the max
    best = load_checkpoint(run, "best")
    assert best["state"]["epoch"] == best_epoch == summary["best_epoch"]
    assert summary["val_top1_best"] == best_val
    assert summary["top1_best"] == next(e["eval_top1"] for e in epochs if e["epoch"] == best_epoch)
    assert summary["top1_last"] == epochs[-1]["eval_top1"] and summary["val_top1_last"] == epochs[-1]["val_top1"]
    assert summary["train_images"] == len(expected_train) and summary["val_images"] == len(expected_val)
    assert summary["selection_split"].startswith("val (0.2 of each class")
    assert checkpoint_source(best)["selected_on"] == summary["selection_split"]

    # a slim export of best.pt, used as a teacher's best.pt (as the benchmarks' kept teachers are), keeps it
    from kdforge.deploy.export import export_model

    export_model(run, which="best", out=tmp_path / "slim.pt")
    teacher = tmp_path / "teacher" / "checkpoints"
    teacher.mkdir(parents=True)
    shutil.copyfile(tmp_path / "slim.pt", teacher / "best.pt")
    assert checkpoint_source(load_checkpoint(teacher / "best.pt"))["selected_on"] == summary["selection_split"]
    old = torch.load(teacher / "best.pt", weights_only=False)  # a slim file from before exports kept the record
    del old["selection"]
    torch.save(old, teacher / "best.pt")
    assert checkpoint_source(load_checkpoint(teacher / "best.pt"))["selected_on"] == summary["selection_split"]


def few_shot_trainer(tmp_path, shots: int, **data):
    from kdforge.engine import Trainer
    from kdforge.methods import Losses

    batch = max(1, int(64 * shots / 10))  # NetGraft's batch for n shots
    cfg = run_config(tmp_path, f"shots{shots}", losses={"ce": 1.0},
                     data={"batch_size": batch, "few_shot": {"shots": shots, "seed": 0, "labels": True}, **data})
    loaded = load_run_data(cfg)
    student = build_zoo_model(cfg.student, 10, 1, "student")
    return Trainer(student, Losses.from_config(cfg.losses), loaded.train, loaded.evaluation, config=cfg,
                   run_dir=tmp_path / cfg.name), batch


@pytest.mark.parametrize("shots", [1, 5, 10])
def test_few_shot_epochs_keep_the_partial_batch(tmp_path, shots):
    trainer, batch = few_shot_trainer(tmp_path, shots)
    trainer.prepare()
    images = 10 * shots
    assert len(trainer.train_loader) == math.ceil(images / batch) == 2  # as the NetGraft code: 2 steps an epoch
    assert sum(labels.shape[0] for _, labels, _ in trainer.train_loader) == images  # every shot, every epoch
    dropping, _ = few_shot_trainer(tmp_path, shots, drop_last=True)
    dropping.prepare()
    assert len(dropping.train_loader) == images // batch == 1


def test_images_seen_counts_every_update(tmp_path):
    trainer, batch = few_shot_trainer(tmp_path, 1)
    summary = trainer.fit()
    assert summary["drop_last"] is False
    assert summary["steps"] == 2 * 3 and summary["images_seen"] == 10 * 3  # 3 epochs of all 10 shots
