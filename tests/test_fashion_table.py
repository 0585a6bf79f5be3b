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
