"""`kdforge tune`: the search space read from the methods, the never-test rule, pruning, resuming a study, the
final comparison, and one-line errors."""

import json
from pathlib import Path

import optuna
import pytest
import yaml

from kdforge.cli import main
from kdforge.errors import ConfigError
from kdforge.recipes import tune
from kdforge.recipes.tune import parse_budget, search_space, trial_losses

BASE = {"data": {"name": "digits", "batch_size": 64, "val_split": {"fraction": 0.2, "seed": 0}},
        "student": {"model": "resnet8"}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "cosine", "epochs": 2},
        "train": {"precision": "fp32", "device": "cpu", "tensorboard": False, "max_steps": 6}}


def test_search_space_is_the_weight_t_and_what_the_method_declares():
    usual, dims = search_space("dkd", 240)
    by_name = {d.name: d for d in dims}
    assert set(by_name) == {"weight", "T", "beta"} and usual == {"ce": 1.0, "dkd": {"weight": 1.0, "warmup": 20}}
    assert (by_name["weight"].low, by_name["weight"].high, by_name["weight"].log) == (0.1, 10.0, True)
    assert by_name["T"].usual == 4.0 and by_name["beta"].usual == 8.0
    for d in dims:
        assert d.low <= d.usual <= d.high
    _, dims = search_space("ab", 10)
    margin, epochs = [d for d in dims if d.name in ("margin", "pretrain_epochs")]
    assert not margin.integer and epochs.integer and not epochs.log and epochs.usual == 1  # 30 of 240 -> 1 of 10
    _, dims = search_space("kd", 10)
    assert [d.name for d in dims] == ["weight", "T"] and dims[0].usual == 0.9
    _, dims = search_space("cc", 10)  # a method may declare its weight's range: CC's reaches 100 (RESULTS)
    weight = next(d for d in dims if d.name == "weight")
    assert weight.usual == 0.02 and weight.low <= 0.02 and weight.high >= 100.0 and weight.log
    assert trial_losses({"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}, "kd", {"T": 2.0}) == \
        {"ce": 0.1, "kd": {"weight": 0.9, "T": 2.0}}
    assert trial_losses({"ce": 1.0, "at": 1000.0}, "at", {"weight": 50.0}) == {"ce": 1.0, "at": {"weight": 50.0}}


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("45s", 45), ("1.5h", 5400), ("600", 600)])
def test_budget_parsing(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1h", "0", "2d"])
def test_a_bad_budget_says_how_to_write_one(text):
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_the_prune_hook_stops_a_trial_the_pruner_prunes():
    class Trial:
        reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) >= 2

    class Trainer:
        class state:
            epoch = 1

        @classmethod
        def stopping(cls):  # the run's last epoch is 3
            return cls.state.epoch >= 3

    hook, trial = tune._prune_hook(Trial()), None
    hook.after_epoch(Trainer, {"val_top1": 50.0})
    Trainer.state.epoch = 2
    with pytest.raises(optuna.TrialPruned, match="epoch 2"):
        hook.after_epoch(Trainer, {"val_top1": 40.0})
    assert Trial.reported == [(1, 50.0), (2, 40.0)]
    hook.after_epoch(Trainer, {"train_loss": 1.0})  # an epoch without validation reports nothing
    Trainer.state.epoch = 3  # the last epoch: the run is over, its result counts even where the pruner says prune
    hook.after_epoch(Trainer, {"val_top1": 30.0})
    assert Trial.reported[-1] == (3, 30.0)


@pytest.mark.parametrize("min_epochs, pruned_at", [(1, 1), (3, 3)])
def test_min_epochs_is_the_first_epoch_a_trial_can_be_pruned(tmp_path, min_epochs, pruned_at):
    study = tune.open_study(f"sqlite:///{tmp_path / 'tune.db'}", "kd", "key", min_epochs)
    for i in range(4):  # finished trials at about 90 on every epoch
        trial = study.ask()
        for epoch in range(1, 11):
            trial.report(90.0 + i / 10, epoch)
            trial.should_prune()
        study.tell(trial, 90.0 + i / 10)
    trial = study.ask()  # far below them from the first epoch on
    decisions = []
    for epoch in range(1, 4):
        trial.report(50.0, epoch)
        decisions.append(trial.should_prune())
    assert decisions.index(True) + 1 == pruned_at


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """kd, 3 trials, no final comparison, while recording which splits are loaded."""
    import kdforge.data as data_package

    root = tmp_path_factory.mktemp("tune")
    (root / "base.yaml").write_text(yaml.safe_dump(BASE))
    loaded = []
    original = data_package.load_dataset

    def recording(name, root_, split, **options):  # every split a run loads (engine/run.load_run_data)
        loaded.append(split)
        return original(name, root_, split, **options)

    data_package.load_dataset = recording
    try:
        code = main(["tune", str(root / "base.yaml"), "--methods", "kd", "--budget", "10m", "--trials", "3",
                     "--teacher", "resnet8", "--seeds", "0", "--no-final", "--no-progress", "--out", str(root / "out"),
                     "--min-epochs", "2"])
    finally:
        data_package.load_dataset = original
    assert code == 0
    return root, loaded


def test_trials_never_read_the_test_split(tuned):
    root, loaded = tuned
    trials = sorted((root / "out" / "trials" / "kd").iterdir())
    assert [t.name for t in trials] == ["trial-0", "trial-1", "trial-2"]
    assert loaded.count("train") == 4 and loaded.count("test") == 1  # the teacher's run only (its own report)
    for trial in trials:
        config = yaml.safe_load((trial / "config.yaml").read_text())
        assert config["data"]["eval_split"] == "" and config["seed"] == 0
        summary = json.loads((trial / "summary.json").read_text())
        assert summary["top1_last"] is None and summary["val_top1_last"] is not None
    first = yaml.safe_load((trials[0] / "config.yaml").read_text())["losses"]
    assert first == {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}  # the usual settings are trial 0


def test_the_best_settings_are_a_method_file_and_the_study_resumes(tuned):
    root, _ = tuned
    out = root / "out"
    best = json.loads((out / "tune.json").read_text())["kd"]
    study = optuna.load_study(study_name="tune-kd", storage=f"sqlite:///{out / 'tune.db'}")
    assert best["trials"] == len(study.trials) == 3 and best["val_top1"] == study.best_value
    assert best["min_epochs"] == study.user_attrs["min_epochs"] == 2  # --min-epochs reaches the study
    losses = yaml.safe_load(Path(best["file"]).read_text())["losses"]
    assert losses["kd"]["T"] == pytest.approx(study.best_params["T"]) and losses["ce"] == 0.1
    stamps = {t: (t / "summary.json").stat().st_mtime_ns for t in (out / "trials" / "kd").iterdir()}
    assert main(["tune", str(root / "base.yaml"), "--methods", "kd", "--budget", "10m", "--trials", "4",
                 "--teacher", "resnet8", "--seeds", "0", "--no-final", "--no-progress", "--out", str(out),
                 "--min-epochs", "2"]) == 0
    study = optuna.load_study(study_name="tune-kd", storage=f"sqlite:///{out / 'tune.db'}")
    assert len(study.trials) == 4 and (out / "trials" / "kd" / "trial-3" / "summary.json").is_file()
    assert all((t / "summary.json").stat().st_mtime_ns == s for t, s in stamps.items())  # not trained again


def test_a_study_continues_only_with_the_min_epochs_it_started_with(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    tune.open_study(storage, "kd", "key", 3)
    assert tune.open_study(storage, "kd", "key", 3).user_attrs["min_epochs"] == 3
    with pytest.raises(ConfigError, match="--min-epochs 1: the study of kd in this folder prunes from epoch 3"):
        tune.open_study(storage, "kd", "key", 1)


def test_a_trial_left_running_by_a_kill_is_marked_failed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    study = tune.open_study(storage, "kd", "key")
    study.ask()  # a trial that a killed process never told
    study = tune.open_study(storage, "kd", "key")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    with pytest.raises(ConfigError, match="other settings"):
        tune.open_study(storage, "kd", "another key")


@pytest.mark.parametrize("extra, base, message", [
    ([], {"data": {"name": "digits"}}, "data.val_split"),
    (["--methods", "nope"], None, "nope"),
    (["--methods", "tfkd"], None, "not a distillation method"),
    (["--budget", "1s", "--methods", "kd", "dkd"], None, "cannot fit one trial"),
    (["--budget", "later"], None, "--budget 'later'"),
    (["--min-epochs", "3"], None, "--min-epochs 3: must be between 1 and the schedule's 2 epochs"),
])
def test_bad_input_is_one_line(tmp_path, capsys, extra, base, message):
    config = {**BASE, **(base or {})}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    args = ["tune", str(tmp_path / "base.yaml"), "--methods", "kd", "--budget", "1h", "--teacher", "resnet8",
            "--no-progress", "--out", str(tmp_path / "out")]
    for flag in ("--methods", "--budget"):
        if flag in extra:
            i = args.index(flag)
            del args[i:i + 2 if flag == "--budget" else i + 2]
    args = args + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out" / "trials").exists()  # refused before any trial


def test_without_optuna_it_says_what_to_install(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    assert main(["tune", str(tmp_path / "base.yaml"), "--methods", "kd", "--budget", "1h"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install optuna" in err


def test_the_final_comparison_trains_the_tuned_settings_beside_the_usual(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    result = tune.run_tune(yaml.safe_load((tmp_path / "base.yaml").read_text()), ["kd"], [0, 1], tmp_path / "out",
                           teacher_model="resnet14", budget_s=600, trials=2)
    best = result["best"]["kd"]
    labels = {g["label"] for g in result["compare"]["groups"]}
    assert {"student-alone", "teacher"} <= labels
    assert ("kd_tuned" in labels) == (not best["usual_was_best"])  # a tuned run only where the search found better
    report = (tmp_path / "out" / "final" / "report" / "report.md").read_text()
    assert "Gain over student-alone" in report and "95 % interval" in report
    page = (tmp_path / "out" / "final" / "report" / "report.html").read_text()
    assert "<h3>kd: the search</h3>" in page and (tmp_path / "out" / "tune-kd.png").is_file()


def test_a_pruned_trial_never_counts_as_the_best_so_far(tmp_path):
    """Optuna keeps a pruned trial's last reported value; the study's picture must not take it for a result."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize")
    dist = {"weight": FloatDistribution(0.1, 10.0, log=True)}

    def add(state, value):
        study.add_trial(create_trial(state=state, value=value, params={"weight": 1.0}, distributions=dist,
                                     intermediate_values={1: value}))

    add(TrialState.COMPLETE, 80.0)
    add(TrialState.PRUNED, 95.0)  # stopped early with a high epoch value: not a result
    add(TrialState.COMPLETE, 85.0)
    add(TrialState.COMPLETE, 82.0)
    assert study.trials[1].value == 95.0  # the premise: Optuna keeps the value
    assert tune.best_so_far(study) == [(0, 80.0), (2, 85.0), (3, 85.0)]
    assert study.best_trial.number == 2  # what `tune` writes as the best settings agrees with the picture
    assert tune.plot_study(study, tmp_path / "study.png").is_file()


def test_a_study_whose_every_trial_was_pruned_says_to_give_a_larger_budget(tmp_path, capsys, monkeypatch):
    """Pruned trials keep a value in Optuna, but none is a result: one line, not Optuna's 'no trials completed'."""
    from optuna.trial import TrialState, create_trial

    def only_pruned(study, *args, **kwargs):
        study.add_trial(create_trial(state=TrialState.PRUNED, value=70.0, intermediate_values={1: 70.0}))

    monkeypatch.setattr(tune, "tune_method", only_pruned)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    code = main(["tune", str(tmp_path / "base.yaml"), "--methods", "kd", "--budget", "10m", "--teacher", "resnet8",
                 "--seeds", "0", "--no-final", "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 2 and "no trial of kd finished; give a larger budget" in capsys.readouterr().err
