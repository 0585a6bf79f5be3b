"""benchmarks/fashion_table.py: its recipe is valid and continuable (committed runs and teachers restored)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from kdforge.engine import train_from_config
from kdforge.config import config_from_dict
from kdforge.engine.checkpoint import load_checkpoint, load_model
from kdforge.recipes.compare import plan_compare

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("fashion_table", ROOT / "benchmarks" / "fashion_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_plans_every_method_and_the_full_variant_drops_the_subset(table, tmp_path):
    base = table.recipe(False, None)
    assert base["data"]["few_shot"] == {"shots": 600, "seed": 0, "labels": True}
    planned = plan_compare(base, table.METHODS, [0, 1, 2], tmp_path, teacher_model=table.TEACHER)
    assert len(planned) == 3 * (2 + len(table.METHODS))  # teacher, student alone, each method; per seed
    assert {"kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "nst", "crd", "dkd", "oh", "afd",
            "rtk"} <= {r.label for r in planned}
    ab = next(r for r in planned if r.label == "ab").config["losses"]["ab"]
    assert ab["pretrain_epochs"] == 1  # 30 of 240 epochs, scaled to 10 and rounded
    full = table.recipe(True, "/data/fm")
    assert "few_shot" not in full["data"] and full["data"]["root"] == "/data/fm"
    assert "few_shot" in table.RECIPE["data"]  # the module's recipe is not changed by recipe()


def _tiny_run(tmp_path, name):
    cfg = {"name": name, "output_dir": str(tmp_path / "runs"), "student": {"model": "resnet8"},
           "data": {"name": "digits", "few_shot": {"shots": 5, "labels": True}, "val_split": 0.1},
           "schedule": {"epochs": 1}, "train": {"precision": "fp32", "progress": False}}
    return Path(train_from_config(config_from_dict(cfg))["run_dir"])


def test_kept_runs_and_teachers_are_restored_for_a_fresh_machine(table, tmp_path):
    run = _tiny_run(tmp_path, "teacher-seed0")
    kept = tmp_path / "kept"
    table.keep(run, kept, is_teacher=True, which="best")
    assert sorted(p.name for p in (kept / run.name).iterdir()) == ["config.yaml", "log.jsonl", "summary.json",
                                                                   "teacher.pt"]
    fresh = tmp_path / "fresh"
    assert table.restore(kept, fresh) == 1
    # the restored folder is a finished run whose checkpoints are the teacher the students used
    for name in ("summary.json", "config.yaml", "log.jsonl"):
        assert (fresh / run.name / name).read_bytes() == (run / name).read_bytes()
    original, _ = load_model(run, "best")
    x = torch.randn(4, 1, 8, 8)
    for which in ("last", "best"):
        restored, _ = load_model(fresh / run.name, which)
        assert torch.equal(restored.eval()(x), original.eval()(x))
    assert load_checkpoint(fresh / run.name, "best")["format"]
    # what is already there is never overwritten
    (fresh / run.name / "summary.json").write_text("{}")
    assert table.restore(kept, fresh) == 0
    assert json.loads((fresh / run.name / "summary.json").read_text()) == {}


def test_a_students_run_keeps_no_checkpoint(table, tmp_path):
    run = _tiny_run(tmp_path, "kd-seed0")
    table.keep(run, tmp_path / "kept", is_teacher=False, which="last")
    assert sorted(p.name for p in (tmp_path / "kept" / run.name).iterdir()) == ["config.yaml", "log.jsonl",
                                                                                "summary.json"]


def test_the_tables_subset_is_balanced_seeded_nested_and_apart_from_validation(table):
    """On the real files: 600 per class, disjoint from the 5 % validation hold-out (300 per class), the
    same draw twice, and the first 300 per class of a 300-shot draw inside it."""
    from kdforge.data.datasets.idx import FASHION_MNIST_SYSTEM_DIR
    from kdforge.engine.run import load_run_data

    if not (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST files absent from {FASHION_MNIST_SYSTEM_DIR}: run `make data`")

    def draw(shots):
        base = table.recipe(False, None)
        base["data"]["few_shot"]["shots"] = shots
        return load_run_data(config_from_dict({**base, "name": "x", "losses": {"ce": 1.0}}))

    data = draw(600)
    assert torch.bincount(data.train.labels, minlength=10).tolist() == [600] * 10
    assert torch.bincount(data.validation.labels, minlength=10).tolist() == [300] * 10  # 5 % of 6,000
    assert len(data.evaluation) == 10_000
    as_rows = lambda images: {bytes(x.numpy().tobytes()) for x in images}  # noqa: E731
    train_rows, val_rows = as_rows(data.train.images), as_rows(data.validation.images)
    assert not train_rows & val_rows  # no training image is a validation image
    assert torch.equal(draw(600).train.images, data.train.images)  # seeded: the same draw again
    assert as_rows(draw(300).train.images) <= train_rows  # nested: fewer shots draw a subset
