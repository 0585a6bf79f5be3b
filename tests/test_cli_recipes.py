"""`kdforge netgraft` and `kdforge quickstart` from the command line, end to end (tiny runs).

What each command's flags plan is read back from the run folders (config.yaml, summary.json, log.jsonl)
and compared with what the paper schedules (kdforge.recipes.netgraft.SCHEDULES) and the flags say,
written out here: for n shots, f = n / 10, stage-1 rates x f, batch int(64 * f), stage 2 at its own rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from kdforge.cli import main
from kdforge.recipes.netgraft import SCHEDULES

W = ["--width", "0.25"]  # quarter-width VGG16s keep these runs small
UNITS = ["layer4", "layer5", "head"]  # vgg16_nobn -> vgg16_nobn_thin with 3 shared blocks
TINY = ["--set", "train.tensorboard=false", "--set", "train.device=cpu", "--set", "train.precision=fp32"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    return out.out


def config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def epoch_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


def stage_runs(folder: Path) -> dict[str, Path]:
    return {**{f"stage1-{u}": folder / f"stage1-{u}" for u in UNITS},
            **{f"stage2-to-{u}": folder / f"stage2-to-{u}" for u in UNITS[1:]}}


def check_planned_schedule(folder: Path, shots: int, epochs1: list[int], epochs2: list[int], lr_blocks: list[float],
                           lr_adapters: float, lr_stage2: float) -> None:
    """Every stage run's saved config holds the paper's scaling of the given schedule."""
    f = shots / 10  # reference_shots 10
    for i, unit in enumerate(UNITS):
        cfg = config(folder / f"stage1-{unit}")
        assert cfg["schedule"]["name"] == "constant" and cfg["schedule"]["epochs"] == epochs1[i], unit
        assert cfg["optim"]["name"] == "adam" and cfg["optim"]["lr"] == pytest.approx(lr_blocks[i] * f), unit
        adapters = {"layer4": ["s2t"], "layer5": ["s2t", "t2s"], "head": ["t2s"]}[unit]
        assert cfg["optim"]["lr_groups"] == {f"{side}.{unit}.*": pytest.approx(lr_adapters * f) for side in adapters}
        assert cfg["data"]["batch_size"] == max(1, int(64 * f))
        assert cfg["student"]["options"]["graft"] == [unit]
    for j, unit in enumerate(UNITS[1:]):
        cfg = config(folder / f"stage2-to-{unit}")
        assert cfg["schedule"]["epochs"] == epochs2[j] and cfg["optim"]["lr"] == pytest.approx(lr_stage2), unit
        assert cfg["optim"]["lr_groups"] == {} and cfg["data"]["batch_size"] == max(1, int(64 * f))
        assert cfg["student"]["options"]["graft"] == UNITS[:j + 2]


# ----------------------------------------------------------------------------- netgraft, no --teacher, digits

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """`kdforge netgraft` without --teacher on digits (10 classes), every stage stopped after 2 steps."""
    out = tmp_path_factory.mktemp("ng") / "out"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["netgraft", *W, "--shots", "2", "--seeds", "3", "--epochs", "1", "--set", "train.max_steps=2",
                     *TINY, "--out", str(out)])  # with progress: the chosen schedule is printed
    assert code == 0
    return out, stdout.getvalue()


def test_netgraft_without_teacher_trains_one_on_the_base_data_and_distils_from_it(digits_run):
    out, _ = digits_run
    teacher = out / "teacher"
    cfg = config(teacher)
    assert cfg["student"] == {"model": "vgg16_nobn", "checkpoint": None, "which": "last", "options": {"width": 0.25},
                              "import": None, "kwargs": {}}
    assert cfg["losses"] == {"ce": 1.0} and cfg["teacher"] is None
    assert cfg["data"]["name"] == "digits" and cfg["data"]["few_shot"] is None  # the whole base training split
    assert cfg["optim"]["name"] == "adam" and cfg["optim"]["lr"] == 1e-3  # the recipe's digits base
    assert cfg["schedule"]["epochs"] == 1  # --epochs
    s = summary(teacher)
    assert s["steps"] == 2 and s["train_images"] == 1437 and s["num_classes"] == 10  # --set train.max_steps=2
    # every stage and baseline distils from that teacher, at its last epoch (no best.pt chosen on test)
    folder = out / "shots2" / "seed3"
    runs = [*stage_runs(folder).values(), folder / "kd-shots", folder / "kd-shots-shared", out / "kd-full" / "seed3"]
    for run in runs:
        assert config(run)["teacher"]["checkpoint"] == str(teacher), run
        assert summary(run)["teacher_checkpoint"]["file"] == str(teacher / "checkpoints" / "last.pt"), run
    assert json.loads((out / "results.json").read_text())["teacher"] == str(teacher)


def test_netgraft_schedule_follows_a_ten_class_teacher_cifar10(digits_run):
    out, printed = digits_run
    assert "schedule: cifar10 (the teacher's number of classes" in printed
    paper = SCHEDULES["cifar10"]
    assert (paper.stage1_epochs, paper.stage2_epochs, paper.lr_blocks) == ([100, 60, 60], [100, 100], [2.5e-4])
    folder = out / "shots2" / "seed3"
    check_planned_schedule(folder, 2, [100, 60, 60], [100, 100], [2.5e-4] * 3, 2.5e-3, 1e-4)
    # KD from scratch on the same shots: NetGraft's epochs of both stages together; the base's cosine otherwise
    kd = config(folder / "kd-shots")
    assert kd["schedule"]["epochs"] == 100 + 60 + 60 + 100 + 100 and kd["schedule"]["name"] == "cosine"
    assert kd["losses"] == {"kd": {"weight": 1.0, "T": 4.0}} and kd["data"]["few_shot"]["labels"] is False
    full = config(out / "kd-full" / "seed3")
    assert full["schedule"]["epochs"] == 1 and full["data"]["few_shot"] is None  # --epochs; the full split
    assert full["losses"] == {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}
    results = json.loads((out / "results.json").read_text())
    assert results["schedule"]["stage1_epochs"] == [100, 60, 60] and results["select"] == "last"


def test_netgraft_set_and_seeds_reach_every_run(digits_run):
    out, _ = digits_run
    folder = out / "shots2" / "seed3"
    runs = [*stage_runs(folder).values(), folder / "kd-shots", out / "kd-full" / "seed3", out / "teacher"]
    for run in runs:
        cfg = config(run)
        assert cfg["train"]["max_steps"] == 2 and cfg["train"]["precision"] == "fp32", run
        assert summary(run)["steps"] == 2, run  # stopped by --set train.max_steps=2
    for run in [*stage_runs(folder).values(), folder / "kd-shots"]:
        cfg = config(run)
        assert cfg["seed"] == 3 and cfg["data"]["few_shot"] == {"shots": 2, "seed": 3, "holdout": 0, "labels": False}
        assert summary(run)["train_images"] == 20
    rows = {(r["method"], r["shots"]) for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows == {("netgraft", 2), ("kd-shots", 2), ("kd-shots-shared", 2), ("kd-full", None)}


# ----------------------------------------------------------------------------- netgraft, 100 classes

def _hundred_class_folder(root: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 2), ("test", 1)):
        for c in range(100):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def test_netgraft_schedule_follows_a_hundred_class_teacher_cifar100_and_no_baselines(tmp_path, capsys):
    data = _hundred_class_folder(tmp_path / "images")
    out = tmp_path / "out"
    printed = cli(capsys, "netgraft", *W, "--shots", "1", "--seeds", "0", "--epochs", "1", "--no-baselines",
                  "--set", "data.name=imagefolder", "--set", f"data.root={data}", "--set", "train.max_steps=1",
                  *TINY, "--out", out)
    assert "schedule: cifar100 (the teacher's number of classes" in printed
    assert summary(out / "teacher")["num_classes"] == 100
    paper = SCHEDULES["cifar100"]
    assert (paper.stage1_epochs, paper.stage2_epochs) == ([1000, 200, 200], [150, 150])
    assert (paper.lr_blocks, paper.lr_adapters, paper.lr_stage2) == ([2.5e-4, 1e-3, 1e-3], 1e-3, 1e-4)
    folder = out / "shots1" / "seed0"
    check_planned_schedule(folder, 1, [1000, 200, 200], [150, 150], [2.5e-4, 1e-3, 1e-3], 1e-3, 1e-4)
    assert summary(folder / "stage1-head")["train_images"] == 100  # 1 image of each of the 100 classes
    # --no-baselines: no KD run trained, none reported
    assert not (folder / "kd-shots").exists() and not (out / "kd-full").exists()
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["netgraft"]
    assert "KD" not in (out / "results.md").read_text()


# ----------------------------------------------------------------------------- netgraft, --select holdout

@pytest.fixture(scope="module")
def holdout_run(digits_run):
    """A given teacher, the cifar100 schedule asked for on digits, stage flags overriding it, hold-out selection."""
    import contextlib
    import io

    out = digits_run[0].parent / "holdout"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        code = main(["netgraft", *W, "--teacher", str(digits_run[0] / "teacher"), "--schedule", "cifar100",
                     "--stage1-epochs", "3", "--stage2-epochs", "3", "2", "--lr-stage2", "3e-4",
                     "--shots", "2", "--seeds", "0", "--select", "holdout", "--holdout", "1", "--no-baselines",
                     *TINY, "--out", str(out)])
    assert code == 0
    return out, stdout.getvalue()


def test_netgraft_given_schedule_and_stage_flags_override_the_default(holdout_run):
    out, printed = holdout_run
    assert "schedule:" not in printed  # given, not chosen
    folder = out / "shots2" / "seed0"
    # cifar100's rates (not the cifar10 default of a 10-class teacher), the flags' epochs and stage-2 rate
    check_planned_schedule(folder, 2, [3, 3, 3], [3, 2], [2.5e-4, 1e-3, 1e-3], 1e-3, 3e-4)
    assert not (out / "teacher").exists()  # --teacher given: none trained
    for run in stage_runs(folder).values():
        assert config(run)["data"]["few_shot"] == {"shots": 2, "seed": 0, "holdout": 1, "labels": False}
        assert config(run)["train"]["eval_every"] == 1  # a tenth of 3 epochs, at least 1: every epoch
    results = json.loads((out / "results.json").read_text())
    assert results["select"] == "holdout" and results["schedule"]["stage2_epochs"] == [3, 2]
    assert results["schedule"]["lr_stage2"] == 3e-4 and results["schedule"]["lr_blocks"] == [2.5e-4, 1e-3, 1e-3]


def _holdout_metrics(run: Path, which: str, shots: int, seed: int, holdout: int) -> dict:
    """Top-1/top-5/loss of the run's `which` checkpoint on the few-shot hold-out, drawn again here."""
    from kdforge.data import TensorLoader, few_shot_dataset, load_dataset
    from kdforge.engine.checkpoint import load_model
    from kdforge.engine.evaluate import evaluate
    from kdforge.engine.precision import resolve_precision

    _, held = few_shot_dataset(load_dataset("digits", None, "train"), shots, seed, holdout)
    model, _ = load_model(run, which)
    precision = resolve_precision("fp32", None, torch.device("cpu"))
    loader = TensorLoader(held, 256, shuffle=False, drop_last=False, device=torch.device("cpu"), augment=None,
                          seed=0, channels_last=False)
    return evaluate(model, loader, precision)


def test_netgraft_select_holdout_chooses_every_stage_on_the_holdout(holdout_run):
    from kdforge.engine.checkpoint import load_checkpoint
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

    out, _ = holdout_run
    folder = out / "shots2" / "seed0"
    for name, run in stage_runs(folder).items():
        s = summary(run)
        records = epoch_records(run)
        assert [r["epoch"] for r in records] == list(range(1, len(records) + 1)) and len(records) in (2, 3)
        assert s["selection_split"] == "few-shot hold-out (1 per class of train, disjoint from the 2 training shots)"
        assert s["train_images"] == 20
        # the log's evaluations are of the 10 hold-out images (1 per digit), never of the test split
        held = [r["eval_top1"] for r in records]
        best = held.index(max(held))  # the first epoch at the hold-out's best
        assert s["best_epoch"] == best + 1 and s["top1_best"] == max(held), name
        for which, record in (("best", records[best]), ("last", records[-1])):
            again = _holdout_metrics(run, which, 2, 0, 1)
            assert again["n"] == 10
            assert again["top1"] == record["eval_top1"] and again["top5"] == record["eval_top5"], (name, which)
            assert again["loss"] == pytest.approx(record["eval_loss"], rel=1e-6), (name, which)  # epochs differ by ~1e-5
        ckpt = load_checkpoint(run, "best")
        assert ckpt["state"]["best_epoch"] == best + 1 and ckpt["state"]["best_top1"] == max(held)
        assert ckpt["selection"] == {"split": s["selection_split"], "metric": "eval_top1"}, name
    # stage 2 starts from the chain's and the new unit's best.pt, not their last epochs
    init = torch.load(folder / "inits" / "to-head.pt", weights_only=False)
    assert init["init_from"]["which"] == "best"
    chain, unit = load_checkpoint(folder / "stage2-to-layer5", "best")["student"], \
        load_checkpoint(folder / "stage1-head", "best")["student"]
    head = {"student.fc_hidden.weight", "student.fc_hidden.bias", "student.fc.weight", "student.fc.bias",
            "t2s.head.weight", "t2s.head.bias"}
    for key, value in init["student"].items():
        assert torch.equal(value, unit[key] if key in head else chain[key]), key
    # the exported student is the last stage's best.pt, folded; the table reports its test top-1
    meta = json.loads((folder / "student.pt.json").read_text())
    assert meta["source"]["which"] == "best"
    assert meta["source"]["checkpoint"] == str(folder / "stage2-to-head" / "checkpoints" / "best.pt")
    results = json.loads((out / "results.json").read_text())
    top1 = evaluate_checkpoint(folder / "student.pt", split="test")["top1"]
    assert results["rows"][0]["top1"] == [top1]
    folded = evaluate_checkpoint(folder / "stage2-to-head", "best", split="test")["top1"]
    assert top1 == pytest.approx(folded, abs=100 / 360 + 1e-9)  # folding changes logits by ~1e-6: at most one image


# ----------------------------------------------------------------------------- quickstart

def test_quickstart_flags_reach_the_runs(tmp_path, capsys):
    out = tmp_path / "qs"
    printed = cli(capsys, "quickstart", "--teacher", "resnet14", "--student", "resnet8", "--seeds", "7",
                  "--epochs", "1", "--no-progress", "--out", out)
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["report", "student-KD-seed7", "student-alone-seed7", "teacher-seed7"]
    models = {"teacher-seed7": "resnet14", "student-alone-seed7": "resnet8", "student-KD-seed7": "resnet8"}
    for name, model in models.items():
        cfg, s = config(out / name), summary(out / name)
        assert cfg["seed"] == 7 and cfg["student"]["model"] == model and s["student"] == model, name
        assert cfg["schedule"]["epochs"] == 1 and s["epochs"] == 1.0, name
        assert s["steps"] == 1437 // 64  # one whole epoch of the digits (the partial last batch dropped)
        assert [r["epoch"] for r in epoch_records(out / name)] == [1.0]
    kd = summary(out / "student-KD-seed7")
    assert kd["teacher"] == str(out / "teacher-seed7") and kd["teacher_model"] == "resnet14"
    assert kd["losses"] == {"ce": 0.1, "kd": 0.9}
    assert config(out / "teacher-seed7")["losses"] == {"ce": 1.0} and config(out / "teacher-seed7")["teacher"] is None
    report = (out / "report" / "report.md").read_text()
    assert "| student-KD | ce+kd | resnet14 (last.pt) | resnet8 |" in report
    assert "| 7 (1) |" in report and str(out / "report" / "report.html") in printed
