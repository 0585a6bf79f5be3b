"""Experiment trackers (`train.trackers: [mlflow]`): a real local MLflow store, read back with its client."""

import json

import mlflow
import pytest
import yaml

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.errors import ConfigError



def _cfg(root, name, epochs=2, **train):
    return config_from_dict({
        "name": name, "output_dir": str(root), "data": {"batch_size": 64}, "student": {"model": "resnet8"},
        "losses": {"ce": 1.0}, "schedule": {"name": "cosine", "epochs": epochs},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu",
                  "trackers": ["mlflow"], "tracker_group": "tests", **train}})


def _client(root, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow.db'}")


def test_a_run_is_logged_with_its_config_every_epoch_its_summary_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = train_from_config(_cfg(tmp_path, "logged"))
    client = _client(tmp_path, monkeypatch)
    experiment = client.get_experiment_by_name("tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "logged" and run.info.status == "FINISHED"
    assert run.data.params["student.model"] == "resnet8" and run.data.params["schedule.epochs"] == "2"
    epochs = [json.loads(line) for line in (tmp_path / "logged" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(int(e["epoch"]), pytest.approx(e["train_loss"])) for e in epochs]
    assert run.data.metrics["summary.top1_last"] == pytest.approx(summary["top1_last"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "log.jsonl"} <= names


def test_a_resumed_run_continues_the_same_tracked_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_from_config(_cfg(tmp_path, "resumed", epochs=3), until_epoch=1)
    train_from_config(_cfg(tmp_path, "resumed", epochs=3), resume=True)
    client = _client(tmp_path, monkeypatch)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert steps == [1, 2, 3] and runs[0].info.status == "FINISHED"


def test_an_unknown_or_missing_tracker_is_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbored'.*mlflow"):
        config_from_dict({"train": {"trackers": ["tensorbored"]}})
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"name": "x", "output_dir": str(tmp_path),
                                                       "train": {"trackers": ["mlflow"]}}))
    assert main(["train", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.trackers" in err and "pip install mlflow-skinny" in err


# ---------------------------------------------------------------- Weights & Biases (offline, read back from its file)

def _wandb_runs(root):
    """Every offline run under `root`, read once W&B's writer process has written each one's exit record (on a
    loaded machine it may still be flushing when `finish()` has returned)."""
    import time

    from wandb_log import read_run

    files = sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))
    deadline = time.monotonic() + 60
    while True:
        runs = [read_run(f) for f in files]
        if all(r["exited"] for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    pytest.importorskip("wandb", reason="the wandb extra (pip install wandb) is not installed")
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc: not logged in, so offline
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_logs_config_every_epoch_summary_and_files_offline(tmp_path, offline_wandb):
    summary = train_from_config(_cfg(tmp_path, "logged", trackers=["wandb"]))
    (run,) = _wandb_runs(tmp_path)
    assert run["run"].display_name == "logged" and run["run"].run_group == "tests"
    assert run["run"].project == "kdforge"
    assert run["config"]["student"]["model"] == "resnet8" and run["config"]["schedule"]["epochs"] == 2
    epochs = [json.loads(line) for line in (tmp_path / "logged" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    logged = [(h["_step"], h["train_loss"]) for h in run["history"] if "train_loss" in h]
    assert logged == [(int(e["epoch"]), pytest.approx(e["train_loss"])) for e in epochs]
    assert run["summary"]["summary.top1_last"] == pytest.approx(summary["top1_last"])
    (artifact,) = run["artifacts"]
    assert {"summary.json", "config.yaml", "log.jsonl"} <= {entry.path for entry in artifact.manifest.contents}


def test_wandb_resumed_run_keeps_its_id_and_both_trackers_log(tmp_path, offline_wandb, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_from_config(_cfg(tmp_path, "resumed", epochs=3, trackers=["wandb", "mlflow"]), until_epoch=1)
    train_from_config(_cfg(tmp_path, "resumed", epochs=3, trackers=["wandb", "mlflow"]), resume=True)
    first, second = _wandb_runs(tmp_path)
    assert first["run"].run_id == second["run"].run_id
    steps = [h["_step"] for run in (first, second) for h in run["history"] if "train_loss" in h]
    assert steps == [1, 2, 3]
    client = _client(tmp_path, monkeypatch)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "train_loss")] == [1, 2, 3]


def test_wandb_mode_follows_the_users_login(monkeypatch, tmp_path):
    from kdforge.engine.hooks.trackers import wandb_mode

    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_a_comparison_logs_its_report_beside_its_runs(tmp_path, offline_wandb, monkeypatch):
    from kdforge.recipes.compare import run_compare

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = {"data": {"name": "digits", "batch_size": 32, "few_shot": {"shots": 10, "seed": 0, "labels": True}},
            "student": {"model": "resnet8"}, "schedule": {"name": "constant", "epochs": 1},
            "train": {"tensorboard": False, "trackers": ["mlflow", "wandb"]}}
    run_compare(base, ["kd"], [0], tmp_path / "study", teacher_model="resnet14", progress=False)
    client = _client(tmp_path / "study", monkeypatch)
    runs = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["kd-seed0", "student-alone-seed0", "study report",
                                                     "teacher-seed0"]
    report = next(r for r in runs if r.info.run_name == "study report")
    assert "report/report.md" in {a.path for a in client.list_artifacts(report.info.run_id, "report")}
    wandb_runs = _wandb_runs(tmp_path / "study")
    assert {r["run"].run_group for r in wandb_runs} == {"study"} and len(wandb_runs) == 4
    (logged,) = [r for r in wandb_runs if r["run"].display_name == "study report"]
    assert "report.md" in {entry.path for entry in logged["artifacts"][0].manifest.contents}
