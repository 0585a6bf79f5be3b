"""Behaviours that had no test: evaluation numbers, eval_every and best.pt, determinism, label smoothing,
optimizers, `kdforge train --print-config / --overwrite`, `kdforge layers --filter`, TensorBoard logs and
`train.compile`."""

import fnmatch
import json
import math
import sys
import warnings

import pytest
import torch
import yaml
from torch import nn

from kdforge.cli import main
from kdforge.config import config_from_dict, config_to_dict, load_config
from kdforge.data import TensorLoader
from kdforge.engine import Trainer, evaluate, load_checkpoint, load_model, train_from_config
from kdforge.engine.logger import read_log
from kdforge.engine.optim import build_optimizer
from kdforge.engine.precision import resolve_precision
from kdforge.engine.run import build_zoo_model
from kdforge.engine.seeding import seed_everything
from kdforge.methods import Losses, StepOutputs
from kdforge.models import build_model

FP32_CPU = resolve_precision("fp32", False, torch.device("cpu"))
QUIET = {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(64, 48)


def run_cfg(tmp_path, name, train=None, data=None, **extra):
    """A cheap run: with train_from_config, 5 digits per class for training and 2 per class to evaluate."""
    data = {"batch_size": 16, "eval_batch_size": 64, "augment": {"crop_padding": 2, "hflip": False},
            "few_shot": {"shots": 5, "labels": True, "holdout": 2}, **(data or {})}
    return config_from_dict({"name": name, "seed": 5, "output_dir": str(tmp_path), "data": data,
                             "optim": {"lr": 0.05}, "schedule": {"name": "constant", "epochs": 1},
                             "losses": {"ce": 1.0}, "train": {**QUIET, **(train or {})}, **extra})


def make_trainer(tmp_path, name, digits, train=None, **extra):
    cfg = run_cfg(tmp_path, name, train, data={"few_shot": None}, **extra)  # the data is given here
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(cfg.student, 10, 1, "student")
    return Trainer(student, Losses.from_config(cfg.losses), *digits, config=cfg, run_dir=tmp_path / name)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- 1. evaluation numbers

class Identity(nn.Module):
    """A 'model' whose logits are its input: the test sets every logit."""

    def forward(self, x):
        return x


def by_hand(rows: list[list[float]], labels: list[int]) -> dict[str, float]:
    """top-1, top-5 (in %) and mean cross-entropy, with plain Python."""
    top1 = top5 = 0
    loss = 0.0
    for row, y in zip(rows, labels):
        rank = sum(v > row[y] for v in row)  # how many classes score above the label (no ties here)
        top1 += rank == 0
        top5 += rank < 5
        peak = max(row)
        loss += math.log(sum(math.exp(v - peak) for v in row)) + peak - row[y]
    n = len(labels)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "n": n}


def test_evaluate_with_set_logits_counts_ranks_and_cross_entropy():
    """The label at rank 0, 2, 4 (inside the top 5), 5 and 9 (outside) of tie-free logits, in uneven batches."""
    classes, ranks = 10, [0, 2, 4, 5, 9, 0, 3, 7, 1]
    rows, labels = [], []
    for i, rank in enumerate(ranks):
        order = torch.randperm(classes).tolist()  # order[r]: the class at rank r
        row = [0.0] * classes
        for r, c in enumerate(order):
            row[c] = 3.0 - 0.5 * r + 0.01 * i  # strictly decreasing in rank: no ties
        rows.append(row)
        labels.append(order[rank])
    logits, y = torch.tensor(rows), torch.tensor(labels)
    loader = [(logits[:4], y[:4]), (logits[4:8], y[4:8]), (logits[8:], y[8:])]
    got = evaluate(Identity(), loader, FP32_CPU)
    assert got["top1"] == pytest.approx(100.0 * 2 / 9) and got["top5"] == pytest.approx(100.0 * 6 / 9)
    want = by_hand(rows, labels)
    assert (got["top1"], got["top5"], got["n"]) == (want["top1"], want["top5"], 9)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_evaluate_with_fewer_than_five_classes_counts_every_sample_in_the_top5():
    logits, y = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]]), torch.tensor([0, 2])
    got = evaluate(Identity(), [(logits, y)], FP32_CPU)
    assert (got["top1"], got["top5"]) == (0.0, 100.0)
    assert got["loss"] == pytest.approx(by_hand(logits.tolist(), y.tolist())["loss"], rel=1e-6)


def test_evaluate_a_network_matches_its_own_logits(digits):
    """resnet8 on digits: the numbers from its eval-mode logits, computed by hand; its modes come back."""
    model = build_model("resnet8", num_classes=10, in_channels=1).train()
    model.layer2.eval()  # a mixed state must be restored module by module
    test = digits[1]
    loader = TensorLoader(test, 20, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0)
    got = evaluate(model, loader, FP32_CPU)
    assert model.training and not model.layer2.training and model.layer1.training
    model.eval()
    rows, labels = [], []
    with torch.no_grad():
        for images, y in loader:  # the same batches: the same float rounding
            rows += model(images).double().tolist()
            labels += y.tolist()
    assert all(len(set(row)) == len(row) for row in rows)  # tie-free
    want = by_hand(rows, labels)
    assert want["top1"] != want["top5"]  # the two counts differ on this data
    assert (got["top1"], got["top5"], got["n"]) == (want["top1"], want["top5"], len(test))
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


# ----------------------------------------------------------------------------- 2. eval_every and best.pt

def test_eval_every_evaluates_due_epochs_and_the_last_and_best_comes_from_them(tmp_path, digits):
    """eval_every=2 over 5 epochs: epochs 2 and 4 are due, and the last one (5) is always evaluated;
    best.pt is the evaluated epoch with the highest top-1 (the first on a tie)."""
    digits = (digits[0].subset(torch.arange(32)), digits[1])  # 2 steps per epoch
    trainer = make_trainer(tmp_path, "ev", digits, train={"eval_every": 2}, optim={"lr": 0.2},
                           schedule={"name": "constant", "epochs": 5})
    summary = trainer.fit()
    epochs = read_log(tmp_path / "ev", "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    evaluated = {e["epoch"]: e["eval_top1"] for e in epochs if "eval_top1" in e}
    assert sorted(evaluated) == [2, 4, 5]
    assert all("eval_loss" not in e and "eval_top5" not in e for e in epochs if e["epoch"] in (1, 3))
    best_epoch = max(evaluated, key=lambda e: (evaluated[e], -e))
    best = load_checkpoint(tmp_path / "ev", "best")
    assert (best["state"]["epoch"], best["state"]["best_epoch"]) == (best_epoch, best_epoch)
    assert best["state"]["best_top1"] == evaluated[best_epoch]
    assert (summary["best_epoch"], summary["top1_best"], summary["top1_last"]) == \
        (best_epoch, evaluated[best_epoch], evaluated[5])
    model, _ = load_model(tmp_path / "ev", "best")  # best.pt holds the weights that scored it
    loader = TensorLoader(digits[1], 64, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0)
    assert evaluate(model, loader, FP32_CPU)["top1"] == pytest.approx(evaluated[best_epoch])


# ----------------------------------------------------------------------------- 3. train.deterministic

def test_deterministic_runs_are_bit_identical_and_set_torch_flags(tmp_path):
    """train.deterministic sets torch.use_deterministic_algorithms(True, warn_only=True) and turns
    cudnn.benchmark off; a run without it turns the algorithms flag back off. Two deterministic runs
    end with bit-identical weights."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    try:
        weights = []
        for name in ("a", "b"):
            torch.backends.cudnn.benchmark = True
            torch.manual_seed(len(weights) * 1000 + 7)  # the process's RNG before a run must not matter
            train_from_config(run_cfg(tmp_path, name, {"deterministic": True, "max_steps": 2}, data={"batch_size": 8}))
            assert torch.are_deterministic_algorithms_enabled()
            assert torch.is_deterministic_algorithms_warn_only_enabled()
            assert torch.backends.cudnn.benchmark is False
            weights.append(load_checkpoint(tmp_path / name)["student"])
        for key, value in weights[0].items():
            assert torch.equal(value, weights[1][key]), key
        seed_everything(0, deterministic=False)  # what a run without it does first
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]


# ----------------------------------------------------------------------------- 4. label smoothing

@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_ce_label_smoothing_equals_the_written_out_formula(eps):
    """(1 - eps) * NLL + eps * mean over classes of -log p, averaged over the batch."""
    logits, labels = torch.randn(6, 5) * 2, torch.tensor([0, 4, 2, 2, 1, 3])
    composer = Losses.from_config({"ce": {"weight": 1.0, "label_smoothing": eps}})
    got = composer(StepOutputs(images=torch.zeros(6, 1), labels=labels, student_logits=logits))["ce"]
    total = 0.0
    for row, y in zip(logits.double().tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        neg_log_p = [log_z - v for v in row]
        total += (1 - eps) * neg_log_p[y] + eps * sum(neg_log_p) / len(row)
    assert got.item() == pytest.approx(total / len(labels), rel=1e-6)


# ----------------------------------------------------------------------------- 5. optimizers

def _one_step_matches(cfg, reference_cls, **reference_kwargs):
    torch.manual_seed(1)
    mine, ref = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    ref.load_state_dict(mine.state_dict())
    start = [p.detach().clone() for p in mine.parameters()]
    optimizer = build_optimizer(list(mine.named_parameters()), cfg)
    reference = reference_cls(ref.parameters(), **reference_kwargs)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    for _ in range(2):  # the second step uses the momentum / moment buffers
        for model, opt in ((mine, optimizer), (ref, reference)):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
    for (name, a), b in zip(mine.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
    assert all(not torch.equal(a, b) for a, b in zip(mine.parameters(), start))  # the steps moved every tensor
    return optimizer


def test_adamw_is_built_with_the_config_and_steps_like_torch():
    cfg = config_from_dict({"optim": {"name": "adamw", "lr": 0.003, "betas": [0.8, 0.95],
                                      "weight_decay": 0.02}}).optim
    opt = _one_step_matches(cfg, torch.optim.AdamW, lr=0.003, betas=(0.8, 0.95), weight_decay=0.02)
    assert type(opt) is torch.optim.AdamW
    assert [(g["lr"], tuple(g["betas"]), g["weight_decay"]) for g in opt.param_groups] == [(0.003, (0.8, 0.95), 0.02)]


def test_sgd_nesterov_is_built_with_the_config_and_steps_like_torch():
    cfg = config_from_dict({"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.8, "nesterov": True,
                                      "weight_decay": 0.001}}).optim
    opt = _one_step_matches(cfg, torch.optim.SGD, lr=0.1, momentum=0.8, weight_decay=0.001, nesterov=True)
    assert type(opt) is torch.optim.SGD
    assert [(g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) for g in opt.param_groups] == \
        [(0.1, 0.8, 0.001, True)]


def test_the_trainer_builds_the_configured_optimizer(tmp_path, digits):
    trainer = make_trainer(tmp_path, "opt", digits, optim={"name": "adamw", "lr": 0.004, "betas": [0.85, 0.9],
                                                           "weight_decay": 0.03})
    trainer.prepare()
    opt = trainer.optimizer
    assert type(opt) is torch.optim.AdamW
    (group,) = opt.param_groups
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (0.004, (0.85, 0.9), 0.03)
    assert {id(p) for p in group["params"]} == {id(p) for p in trainer.student.parameters()}


# ----------------------------------------------------------------------------- 6. kdforge train CLI

def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    overrides = [f"output_dir={tmp_path}", "name=shown", "optim.lr=0.123", "train.max_steps=1"]
    code, out, err = run_cli(capsys, "train", *(a for o in overrides for a in ("--set", o)), "--print-config")
    assert code == 0 and err == ""
    printed = yaml.safe_load(out)
    assert printed == config_to_dict(load_config(None, overrides))
    assert printed["optim"]["lr"] == 0.123 and printed["name"] == "shown"
    assert printed["schedule"]["epochs"] == 240 and printed["train"]["eval_every"] == 1  # defaults filled in
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_print_config_rejects_a_bad_loss_parameter_before_printing(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--set", f"output_dir={tmp_path}", "--set", "losses.kd.TT=3",
                             "--print-config")
    assert code != 0 and out == ""
    assert "losses.kd.TT: method 'kd' has no parameter 'TT'" in err and "Did you mean: T?" in err
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_finished_run_and_without_it_the_cli_refuses(tmp_path, capsys):
    base = ["train", "--set", f"output_dir={tmp_path}", "--set", "name=r", "--set", "schedule.epochs=1",
            "--set", "data.batch_size=8", "--set", "data.few_shot.shots=5", "--set", "data.few_shot.labels=true",
            "--set", "data.few_shot.holdout=1", "--set", "train.progress=false", "--set", "train.tensorboard=false",
            "--set", "train.device=cpu", "--set", "train.precision=fp32"]
    code, out, _ = run_cli(capsys, *base, "--set", "train.max_steps=2")
    assert code == 0 and json.loads(out)["steps"] == 2
    run = tmp_path / "r"
    (run / "marker.txt").write_text("old")
    before = (run / "summary.json").read_text()
    code, out, err = run_cli(capsys, *base, "--set", "train.max_steps=3")
    assert code == 2 and out == ""
    assert err == (f"kdforge train: error: run folder {run} already holds a run: use --resume to continue it, "
                   f"--overwrite to start again, or --set name=NEW_NAME\n")
    assert (run / "summary.json").read_text() == before and (run / "marker.txt").is_file()
    code, out, _ = run_cli(capsys, *base, "--set", "train.max_steps=3", "--overwrite")
    assert code == 0 and json.loads(out)["steps"] == 3
    assert not (run / "marker.txt").exists()  # the old folder was removed, not written over
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    assert load_checkpoint(run)["state"]["step"] == 3
    assert [r["step"] for r in read_log(run, "epoch")] == [3]  # the old run's log is gone


# ----------------------------------------------------------------------------- 7. kdforge layers --filter

def _listed_modules(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    return [line.split()[0] for line in lines[start:] if line.strip() and not line.startswith(("embedding", "pre-"))]


@pytest.mark.parametrize("pattern, extra", [("layer*.?", []), ("layer2.*", ["--all"]), ("*conv*", ["--all"])])
def test_layers_filter_lists_only_matching_modules(capsys, pattern, extra):
    code, out, _ = run_cli(capsys, "layers", "resnet8", "--num-classes", "10", "--filter", pattern, *extra)
    assert code == 0
    model = build_model("resnet8", num_classes=10)
    leaves = (nn.BatchNorm2d, nn.ReLU) if not extra else ()  # left out unless --all
    want = [name for name, m in model.named_modules()
            if name and fnmatch.fnmatchcase(name, pattern) and not isinstance(m, leaves)]
    assert want and _listed_modules(out) == want


# ----------------------------------------------------------------------------- 8. TensorBoard

def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    """With train.tensorboard the run folder gets tensorboard/ events whose scalars equal log.jsonl's
    numbers at the same steps; where tensorboard is not installed the run must say so."""
    cfg = run_cfg(tmp_path, "tb", {"tensorboard": True, "max_steps": 4, "log_every": 2},
                  data={"batch_size": 8})
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="TensorBoard is not installed"):
            train_from_config(cfg)
        return
    train_from_config(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = tmp_path / "tb" / "tensorboard"
    assert any(p.name.startswith("events.out.tfevents") for p in folder.iterdir())
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    records = read_log(tmp_path / "tb")
    checked = 0
    for record in records:
        for key, value in record.items():
            if key == "kind" or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            tag = f"{record['kind']}/{key}"
            assert tag in tags, tag
            (scalar,) = [s for s in events.Scalars(tag) if s.step == record["step"]]
            assert scalar.value == pytest.approx(value, rel=1e-6, abs=1e-6), tag
            checked += 1
    assert [r["step"] for r in records if r["kind"] == "step"] == [2, 4]
    assert {"step/ce", "step/loss", "step/lr", "epoch/eval_top1", "epoch/train_loss"} <= tags
    assert checked >= 10


def test_tensorboard_missing_is_said_not_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_from_config(run_cfg(tmp_path, "notb", {"tensorboard": True, "max_steps": 1}))
    assert any("TensorBoard is not installed (pip install tensorboard)" in str(w.message) for w in caught)
    assert not (tmp_path / "notb" / "tensorboard").exists()
    assert read_log(tmp_path / "notb", "epoch")  # the JSONL log is still written


# ----------------------------------------------------------------------------- 10. train.compile

class CountingRunner:
    """What the patched torch.compile returns: the module itself, counting its calls."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("compile_flag", [True, False])
def test_compile_flag_reaches_torch_compile_and_trains_through_it(tmp_path, digits, monkeypatch, compile_flag):
    """A real compiled CPU run takes ~45 s here, so torch.compile is replaced: the trainer compiles the
    student (only with train.compile) and every training step runs through the compiled module."""
    runners = []

    def fake_compile(module, *args, **kwargs):
        runners.append(CountingRunner(module))
        return runners[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = make_trainer(tmp_path, "comp", digits, train={"compile": compile_flag, "max_steps": 2})
    trainer.fit()
    if not compile_flag:
        assert runners == []
        return
    assert len(runners) == 1 and runners[0].module is trainer.student
    assert runners[0].calls == 2  # the two training steps; the dry run and evaluation run the plain model
