"""Experiment trackers as loop hooks (`train.trackers: [mlflow, wandb]`): the run's resolved config as parameters,
every epoch record's numbers as metrics, the summary, and the run's files as artifacts.

MLflow (an optional extra: `pip install mlflow-skinny`, or `kdforge[mlflow]`) writes where
`MLFLOW_TRACKING_URI` says, else to a local SQLite store in the run's output folder
(`<output_dir>/mlflow.db`, artifacts in `<output_dir>/mlartifacts`). The experiment is `train.tracker_group`
(kdforge compare and tune set it to their folder's name) or "kdforge". A resumed run continues the same
MLflow run (its id is kept in the checkpoint). Only the main process of a distributed run logs.

Weights & Biases (`pip install wandb`, or `kdforge[wandb]`) runs offline, into `<output_dir>/wandb/`, unless
the user has logged in (`wandb login`: an api.wandb.ai entry in ~/.netrc, or WANDB_API_KEY) or sets WANDB_MODE;
`wandb sync` uploads offline runs later. The project is WANDB_PROJECT or "kdforge", the group
`train.tracker_group`; a resumed run continues the same W&B run id.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from kdforge.engine.hooks.base import Hook
from kdforge.errors import ConfigError

#: tracker name -> (module to import, the pip package that brings it)
TRACKERS = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb")}
#: files of a finished run logged as artifacts (those that exist)
ARTIFACTS = ("summary.json", "config.yaml", "log.jsonl", "curves.png")


def check_trackers(names: list[str], path: str = "train.trackers") -> None:
    """One-line ConfigErrors for a tracker kdforge does not know, or one that is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"{path}: unknown tracker {name!r}; kdforge logs to {', '.join(TRACKERS)}")
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{path}: {name} is not installed: pip install {package} (in the same pip command as "
                              f"the torch pin), or drop it from train.trackers")


def tracker_hooks(cfg) -> list[Hook]:
    """The hooks of the run's `train.trackers`."""
    check_trackers(list(cfg.train.trackers))
    return [{"mlflow": MLflowHook, "wandb": WandbHook}[name]() for name in dict.fromkeys(cfg.train.trackers)]


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as {dotted.key: value as text} (MLflow parameters are text of at most 6,000 characters)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_params(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a record, with names MLflow accepts ('/' kept, other odd characters as '_')."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            continue
        out["".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)] = float(value)
    return out


def mlflow_experiment(output_dir: Path, group: str | None) -> None:
    """Point MLflow at MLFLOW_TRACKING_URI, else at the local store in `output_dir`, and at the experiment `group`
    ("kdforge" if None), created if new."""
    import mlflow

    out = output_dir.resolve()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    group = group or "kdforge"
    if mlflow.get_experiment_by_name(group) is None:
        mlflow.create_experiment(group, artifact_location=(out / "mlartifacts").as_uri())
    mlflow.set_experiment(group)


def log_report(trackers: list[str], group: str | None, output_dir: Path, report_dir: Path) -> None:
    """A study's report (`kdforge compare` / `tune`: its page, tables and pictures) as the artifacts of one more
    tracked run, '<group> report', beside the study's runs in each tracker."""
    files = [f for f in sorted(Path(report_dir).iterdir()) if f.is_file()]
    name = f"{group or 'kdforge'} report"
    if "mlflow" in trackers:
        import mlflow

        mlflow_experiment(Path(output_dir), group)
        with mlflow.start_run(run_name=name, tags={"kdforge.kind": "report"}):
            for path in files:
                mlflow.log_artifact(str(path), artifact_path="report")
    if "wandb" in trackers:
        import wandb

        out = Path(output_dir).resolve()
        run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "kdforge", group=group, name=name,
                         job_type="report", dir=str(out), mode=wandb_mode(), reinit="create_new")
        artifact = wandb.Artifact(artifact_name(name, suffix=""), type="kdforge-report")
        for path in files:
            artifact.add_file(str(path))
        run.log_artifact(artifact)
        run.finish()


class MLflowHook(Hook):
    """Logs the run to MLflow (see the module docstring)."""

    name = "tracker_mlflow"

    def __init__(self):
        self.run_id: str | None = None

    def before_train(self, trainer) -> None:
        if not trainer.dist.is_main:
            return
        import mlflow

        from kdforge.config import config_to_dict

        mlflow_experiment(Path(trainer.cfg.output_dir), trainer.cfg.train.tracker_group)
        if self.run_id is not None:  # a resumed run: the same MLflow run
            mlflow.start_run(run_id=self.run_id)
            return
        run = mlflow.start_run(run_name=trainer.cfg.name, tags={"kdforge.run_dir": str(trainer.run_dir)})
        self.run_id = run.info.run_id
        mlflow.log_params(flat_params(config_to_dict(trainer.cfg)))

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        if trainer.dist.is_main and self.run_id is not None:
            import mlflow

            mlflow.log_metrics(numbers(record), step=int(trainer.state.epoch))

    def after_train(self, trainer) -> None:
        if not trainer.dist.is_main or self.run_id is None:
            return
        import mlflow

        mlflow.log_metrics({f"summary.{k}": v for k, v in numbers(trainer.summary or {}).items()})
        for name in ARTIFACTS:
            if (trainer.run_dir / name).is_file():
                mlflow.log_artifact(str(trainer.run_dir / name))
        mlflow.end_run()

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


def wandb_mode() -> str:
    """WANDB_MODE if set; else 'online' for a user who has logged in (WANDB_API_KEY, or `wandb login`'s entry in
    ~/.netrc), 'offline' otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import netrc

    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


class WandbHook(Hook):
    """Logs the run to Weights & Biases (see the module docstring)."""

    name = "tracker_wandb"

    def __init__(self):
        self.run_id: str | None = None
        self.run = None

    def before_train(self, trainer) -> None:
        if not trainer.dist.is_main:
            return
        import wandb

        from kdforge.config import config_to_dict

        out = Path(trainer.cfg.output_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        resumed = self.run_id is not None
        project = os.environ.get("WANDB_PROJECT") or "kdforge"
        self.run = wandb.init(project=project, group=trainer.cfg.train.tracker_group, name=trainer.cfg.name,
                              config=config_to_dict(trainer.cfg), dir=str(out), mode=wandb_mode(), id=self.run_id,
                              resume="allow" if resumed else None, reinit="create_new",
                              notes=f"kdforge run folder: {trainer.run_dir}")
        self.run_id = self.run.id

    def after_epoch(self, trainer, record: dict[str, Any]) -> None:
        if trainer.dist.is_main and self.run is not None:
            self.run.log(numbers(record), step=int(trainer.state.epoch))

    def after_train(self, trainer) -> None:
        if not trainer.dist.is_main or self.run is None:
            return
        import wandb

        self.run.summary.update({f"summary.{k}": v for k, v in numbers(trainer.summary or {}).items()})
        files = [trainer.run_dir / name for name in ARTIFACTS if (trainer.run_dir / name).is_file()]
        if files:
            artifact = wandb.Artifact(artifact_name(trainer.cfg.name), type="kdforge-run")
            for path in files:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.finish()
        self.run = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


def artifact_name(run_name: str, suffix: str = "-files") -> str:
    """A W&B artifact name for a run's files (letters, digits, '-', '_', '.')."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{run_name}{suffix}")
