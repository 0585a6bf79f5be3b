"""Few-shot runs (`data.few_shot`): n images per class, label-free unless asked, selection on a hold-out."""

import json

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.data import TensorLoader, few_shot_dataset, load_dataset
from kdforge.engine import evaluate, load_model, train_from_config
from kdforge.engine.precision import resolve_precision
from kdforge.errors import ConfigError

TRAIN = {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}


def config(tmp_path, name, losses, few_shot, **extra):
    return config_from_dict({
        "name": name, "output_dir": str(tmp_path), "student": {"model": "resnet8"}, "losses": losses,
        "data": {"batch_size": 8, "augment": {"crop_padding": 2, "hflip": False}, "few_shot": few_shot},
        "schedule": {"name": "constant", "epochs": 2}, "train": TRAIN, **extra})


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = config_from_dict({"name": "teacher", "output_dir": str(out), "student": {"model": "resnet8"},
                            "losses": {"ce": 1.0}, "schedule": {"name": "constant", "epochs": 1},
                            "train": {**TRAIN, "max_steps": 3}})
    train_from_config(cfg)
    return out / "teacher"


def test_label_free_kd_trains_on_the_shots_only(tmp_path, teacher_dir):
    cfg = config(tmp_path, "kd", {"kd": 1.0}, {"shots": 3, "seed": 4}, teacher={"checkpoint": str(teacher_dir)})
    summary = train_from_config(cfg)
    assert summary["train_images"] == 30  # 3 per class, 10 classes
    assert summary["selection_split"] == "test"
    epochs = [json.loads(line) for line in (tmp_path / "kd" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert len(epochs) == 2 and all(e["train_top1"] is None for e in epochs)  # no labels: no training accuracy
    assert all(e["eval_top1"] is not None for e in epochs)  # the test split keeps its labels


def test_methods_see_no_labels(tmp_path, teacher_dir, monkeypatch):
    from kdforge.methods.kd import KD

    seen = []
    original = KD.forward
    monkeypatch.setattr(KD, "forward", lambda self, out: seen.append(out.labels) or original(self, out))
    cfg = config(tmp_path, "kd", {"kd": 1.0}, {"shots": 2}, teacher={"checkpoint": str(teacher_dir)})
    train_from_config(cfg)
    assert seen and all(labels is None for labels in seen)


def test_a_loss_that_needs_labels_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"losses \['ce'\] need labels.*few_shot.labels"):
        train_from_config(config(tmp_path, "ce", {"ce": 1.0}, {"shots": 2}))
    assert not (tmp_path / "ce").exists()


def test_holdout_is_the_evaluation_set_and_never_the_test_split(tmp_path):
    few_shot = {"shots": 4, "seed": 1, "holdout": 3, "labels": True}
    summary = train_from_config(config(tmp_path, "held", {"ce": 1.0}, few_shot))
    assert summary["train_images"] == 40
    assert summary["selection_split"].startswith("few-shot hold-out (3 per class")
    # the logged top-1 is the hold-out's: recompute it from the last checkpoint on the same 30 images
    model, _ = load_model(tmp_path / "held", "last")
    _, held = few_shot_dataset(load_dataset("digits", None, "train"), 4, 1, 3, keep_labels=True)
    assert len(held) == 30
    loader = TensorLoader(held, 256, shuffle=False, drop_last=False, device=torch.device("cpu"), augment=None,
                          seed=0, channels_last=False)
    metrics = evaluate(model, loader, resolve_precision("fp32", None, torch.device("cpu")))
    assert metrics["n"] == 30 and metrics["top1"] == summary["top1_last"]


def test_few_shot_settings_are_checked():
    for bad, key in (({"shots": 0}, "shots"), ({"shots": 2, "holdout": -1}, "holdout")):
        with pytest.raises(ConfigError, match=f"data.few_shot.{key}"):
            config_from_dict({"data": {"few_shot": bad}})
