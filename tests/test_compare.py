"""`kdforge compare`: usual weights, the gain table, the runs it plans, reuse and resume, its errors."""

from __future__ import annotations

import copy
import inspect
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from kdforge.cli import main
from kdforge.errors import ConfigError
from kdforge.methods import method_class, method_names
from kdforge.methods.usual import usual_losses
from kdforge.recipes.compare import plan_compare, run_compare, validation_winner
from kdforge.report.gains import gain_rows

ROOT = Path(__file__).resolve().parent.parent

# 20 labelled images per class of digits (200), 1 epoch: a comparison in seconds
TINY = {
    "data": {"name": "digits", "batch_size": 32, "val_split": {"fraction": 0.1, "seed": 0},
             "few_shot": {"shots": 20, "seed": 0, "labels": True}},
    "student": {"model": "resnet8"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine", "epochs": 1},
    "train": {"eval_every": 1},
}


# ---------------------------------------------------------------- usual weights

def test_usual_losses_follow_the_crd_benchmark_convention():
    assert usual_losses("kd") == {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}
    assert usual_losses("at") == {"ce": 1.0, "at": 1000.0}
    assert usual_losses("crd") == {"ce": 1.0, "crd": 0.8}
    assert usual_losses("afd") == {"ce": 1.0, "kd": {"weight": 0.9, "T": 4.0}, "afd": 200.0}
    assert usual_losses("rtk")["kd"] == {"weight": 0.9, "T": 4.0}
    assert usual_losses("simkd") == {"simkd": 1.0}  # its authors' `-c 0 -d 0 -b 1`
    with pytest.raises(ValueError, match="ce does not distil from a teacher"):
        usual_losses("ce")


@pytest.mark.parametrize("method, key, usual", [("ab", "pretrain_epochs", 30), ("ft", "pretrain_epochs", 30),
                                                 ("dkd", "warmup", 20)])
def test_epoch_counted_settings_keep_their_share_of_a_240_epoch_run(method, key, usual):
    assert usual_losses(method)[method][key] == usual  # no epochs given: the paper's value
    assert usual_losses(method, 240)[method][key] == usual
    assert usual_losses(method, 120)[method][key] == usual // 2
    assert usual_losses(method, 10)[method][key] == max(1, round(usual * 10 / 240))
    assert usual_losses(method, 1)[method][key] == 1  # never 0 epochs


def _usual_config(stem: str) -> bool:
    """A config named after a distillation method; `<method>_<variant>` files (crd_kd: CRD + KD, kd_ls: logit
    standardisation, tfkd_self) are combinations or settings beyond the usual weights, and tfkd has no teacher."""
    return stem in method_names() and method_class(stem).needs_teacher


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs/cifar100/methods").glob("*.yaml")
                                        if _usual_config(p.stem)), ids=lambda p: p.stem)
def test_usual_losses_agree_with_the_cifar100_method_configs(path):
    """The configs written from the papers and usual_losses give the same weights and parameters
    (a parameter the config leaves out must be the method's default)."""
    given = yaml.safe_load(path.read_text())["losses"]
    usual = usual_losses(path.stem)
    assert set(given) == set(usual)
    for name in given:
        a, b = given[name], usual[name]
        a = a if isinstance(a, dict) else {"weight": a}
        b = b if isinstance(b, dict) else {"weight": b}
        assert a.get("weight", 1.0) == b.get("weight", 1.0), name
        if name == "ce":
            continue
        defaults = {k: p.default for k, p in inspect.signature(method_class(name).__init__).parameters.items()}
        as_list = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 (YAML lists vs tuple defaults)
        for key in (set(a) | set(b)) - {"weight"}:
            assert as_list(a.get(key, defaults.get(key))) == as_list(b.get(key, defaults.get(key))), (name, key)


# ---------------------------------------------------------------- the gain table

def _record(label, seeds, top1, val=None):
    n = len(seeds)
    metric = lambda values: {"values": values, "n": n, "mean": None, "std": None}  # noqa: E731
    return {"label": label, "seeds": seeds,
            "metrics": {"top1_last": metric(top1), "val_top1_last": {**metric(val or [None] * n),
                                                                     "mean": None if val is None else sum(val) / n},
                        "ms_per_step": {**metric([5.0] * n), "mean": 5.0},
                        "method_params": {**metric([0] * n), "mean": 0.0}}}


def test_gain_is_paired_by_seed_and_rows_sort_best_first():
    alone = _record("student-alone", [0, 1, 2], [80.0, 82.0, 81.0])
    kd = _record("kd", [2, 0, 1], [84.0, 81.0, 85.0])  # another seed order: pairing must use the seed
    bad = _record("bad", [0, 1], [79.0, 80.5])
    rows = gain_rows([alone, kd, bad], "student-alone")
    assert [r["label"] for r in rows] == ["kd", "student-alone", "bad"]
    kd_row = rows[0]
    diffs = [81.0 - 80.0, 85.0 - 82.0, 84.0 - 81.0]
    mean = sum(diffs) / 3
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert kd_row["gain"] == pytest.approx((mean, std))
    half = 4.302652729749464 * std / math.sqrt(3)  # t_0.975 with 2 degrees of freedom (tables)
    assert kd_row["interval"] == pytest.approx((mean - half, mean + half))
    assert mean - half < 0 and kd_row["verdict"] == "not resolved"  # higher on all 3 seeds, but 1.0 to 3.0 apart
    assert rows[2]["gain"] == pytest.approx((-1.25, math.sqrt(0.125)))  # diffs -1.0, -1.5
    half = 12.706204736174694 * math.sqrt(0.125) / math.sqrt(2)  # df 1: [-4.43, +1.93] straddles 0
    assert rows[2]["interval"] == pytest.approx((-1.25 - half, -1.25 + half))
    assert rows[2]["verdict"] == "not resolved"  # lower on both seeds, yet the interval holds 0
    clearly_lower = _record("low", [0, 1, 2], [78.0, 80.1, 78.9])  # diffs -2.0, -1.9, -2.1
    clearly_higher = _record("high", [0, 1, 2], [81.0, 83.2, 81.9])  # diffs +1.0, +1.2, +0.9
    rows = {r["label"]: r for r in gain_rows([alone, clearly_lower, clearly_higher], "student-alone")}
    assert rows["low"]["verdict"] == "lower" and rows["high"]["verdict"] == "higher"
    one_seed = gain_rows([alone, _record("m", [0], [81.0])], "student-alone")
    row = next(r for r in one_seed if r["label"] == "m")
    assert row["verdict"] == "not resolved" and row["interval"] is None
    with pytest.raises(ValueError, match="baseline 'nope' is not a group.*student-alone, kd, bad"):
        gain_rows([alone, kd, bad], "nope")


def test_validation_winner_uses_validation_top1_only():
    records = [_record("teacher", [0], [99.0], val=[99.0]), _record("student-alone", [0], [80.0], val=[70.0]),
               _record("kd", [0], [90.0], val=[60.0]), _record("dkd", [0], [70.0], val=[75.0])]
    assert validation_winner(records) == {"label": "dkd", "val_top1": 75.0}  # not kd (best test), not the teacher
    assert validation_winner([_record("kd", [0], [90.0])]) is None


# ---------------------------------------------------------------- planning and errors

def test_plan_runs_seed_by_seed_with_each_seeds_teacher(tmp_path):
    planned = plan_compare(copy.deepcopy(TINY), ["kd", "at"], [0, 1], tmp_path, teacher_model="resnet14")
    assert [r.config["name"] for r in planned] == [
        "teacher-seed0", "student-alone-seed0", "kd-seed0", "at-seed0",
        "teacher-seed1", "student-alone-seed1", "kd-seed1", "at-seed1"]
    by_name = {r.config["name"]: r.config for r in planned}
    assert by_name["teacher-seed1"]["student"] == {"model": "resnet14"}
    assert by_name["teacher-seed1"]["losses"] == {"ce": 1.0}
    assert by_name["student-alone-seed1"]["losses"] == {"ce": 1.0} and "teacher" not in by_name["student-alone-seed1"]
    assert by_name["kd-seed1"]["teacher"] == {"checkpoint": str(tmp_path / "teacher-seed1"), "which": "best"}
    assert by_name["at-seed0"]["losses"] == usual_losses("at", 1)
    assert all(by_name[n]["seed"] == int(n[-1]) for n in by_name)


def test_self_distillation_uses_the_student_alone_run_as_teacher(tmp_path):
    planned = plan_compare(copy.deepcopy(TINY), ["kd"], [3], tmp_path, teacher_model="resnet8")
    assert [r.config["name"] for r in planned] == ["student-alone-seed3", "kd-seed3"]
    assert planned[1].config["teacher"]["checkpoint"] == str(tmp_path / "student-alone-seed3")


def test_a_fixed_teacher_checkpoint_serves_every_seed_at_the_which_given(tmp_path):
    base = {**copy.deepcopy(TINY), "teacher": {"checkpoint": "runs/t", "which": "last"}}
    planned = plan_compare(base, ["kd"], [0, 1], tmp_path)
    assert [r.config["teacher"] for r in planned if r.label == "kd"] == [{"checkpoint": "runs/t", "which": "last"}] * 2


def test_method_files_are_labelled_by_file_name(tmp_path):
    f = tmp_path / "kd_t2.yaml"
    f.write_text("losses:\n  ce: 0.5\n  kd: {weight: 0.5, T: 2.0}\n")
    planned = plan_compare(copy.deepcopy(TINY), [str(f)], [0], tmp_path / "out", teacher_model="resnet8")
    assert planned[-1].config["name"] == "kd_t2-seed0"
    assert planned[-1].config["losses"] == {"ce": 0.5, "kd": {"weight": 0.5, "T": 2.0}}


@pytest.mark.parametrize("change, methods, teacher, message", [
    ({"losses": {"ce": 1.0}}, ["kd"], "resnet8", "the base config sets losses, which the comparison decides; remove it "
                                                 "(use --methods, --teacher, --seeds, --out)"),
    ({"seed": 3}, ["kd"], "resnet8", "the base config sets seed"),
    ({}, ["kd"], None, "no teacher: set teacher.checkpoint in the base config"),
    ({"teacher": {"checkpoint": "runs/t"}}, ["kd"], "resnet8", "both --teacher and the base config's"),
    ({"student": {}}, ["kd"], "resnet8", "the base config needs student.model"),
    ({}, ["kdd"], "resnet8", "--methods: unknown method 'kdd'. Did you mean: kd, kdsvd, rkd?"),
    ({}, ["ce"], "resnet8", "--methods: ce does not distil from a teacher"),
    ({}, ["kd", "kd"], "resnet8", "--methods: kd given twice"),
    ({}, ["teacher.yaml"], "resnet8", "teacher.yaml"),
])
def test_bad_comparisons_fail_before_training(tmp_path, change, methods, teacher, message):
    base = {**copy.deepcopy(TINY), **change}
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_compare(base, methods, [0], tmp_path / "out", teacher_model=teacher)
    assert not (tmp_path / "out").exists()


def test_a_method_file_without_losses_or_with_other_sections_is_refused(tmp_path):
    empty, extra = tmp_path / "empty.yaml", tmp_path / "extra.yaml"
    empty.write_text("optim: {lr: 0.1}\n")
    extra.write_text("losses: {ce: 1.0, kd: 1.0}\noptim: {lr: 0.1}\n")
    with pytest.raises(ConfigError, match="empty.yaml: the file has no `losses:` section"):
        plan_compare(copy.deepcopy(TINY), [str(empty)], [0], tmp_path, teacher_model="resnet8")
    with pytest.raises(ConfigError, match=r"a method file holds only `losses:` .*; it also sets optim.lr"):
        plan_compare(copy.deepcopy(TINY), [str(extra)], [0], tmp_path, teacher_model="resnet8")
    extra.write_text("losses: {ce: 1.0, kd: 1.0}\noptim: {name: adam}\n")
    with pytest.raises(ConfigError, match="it also sets optim.name: 'adam'"):
        plan_compare(copy.deepcopy(TINY), [str(extra)], [0], tmp_path, teacher_model="resnet8")


def test_a_method_file_may_train_its_row_with_dot_and_only_that_row(tmp_path):
    dot = tmp_path / "kd_dot.yaml"
    dot.write_text("losses: {ce: 0.1, kd: 0.9}\noptim: {name: dot, dot_delta: 0.05}\n")
    base = copy.deepcopy(TINY)
    base["optim"] = {"lr": 0.02, "momentum": 0.9}
    planned = {run.label: run.config for run in plan_compare(base, [str(dot), "kd"], [0], tmp_path,
                                                                 teacher_model="resnet8")}
    assert planned["kd_dot"]["optim"] == {"lr": 0.02, "momentum": 0.9, "name": "dot", "dot_delta": 0.05}
    assert planned["kd"]["optim"] == {"lr": 0.02, "momentum": 0.9}
    assert planned["student-alone"]["optim"] == {"lr": 0.02, "momentum": 0.9}


# ---------------------------------------------------------------- end to end

def test_compare_trains_reports_reuses_and_resumes(tmp_path, capsys):
    base_file = tmp_path / "base.yaml"
    base_file.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "cmp"
    argv = ["compare", str(base_file), "--methods", "kd", "dkd", "--teacher", "resnet14", "--seeds", "0", "1",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    names = ["teacher-seed0", "student-alone-seed0", "kd-seed0", "dkd-seed0",
             "teacher-seed1", "student-alone-seed1", "kd-seed1", "dkd-seed1"]
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in names}
    # each student distilled from its own seed's teacher, at best.pt chosen on the validation split
    for n in ("kd-seed1", "dkd-seed0"):
        src = summaries[n]["teacher_checkpoint"]
        assert Path(src["file"]) == out / f"teacher-seed{n[-1]}" / "checkpoints" / "best.pt"
        assert src["selected_on"].startswith("val")
    # the winner named on the validation split, computed here from the summaries
    val = {label: sum(summaries[f"{label}-seed{s}"]["val_top1_last"] for s in (0, 1)) / 2
           for label in ("student-alone", "kd", "dkd")}
    best = max(val, key=val.get)
    assert f"best on the validation split: {'the student alone' if best == 'student-alone' else best} " in printed
    # the gain table: kd's gain from the summaries, paired by seed
    report = json.loads((out / "report" / "report.json").read_text())
    kd_row = next(r for r in report["gains"] if r["label"] == "kd")
    diffs = [summaries[f"kd-seed{s}"]["top1_last"] - summaries[f"student-alone-seed{s}"]["top1_last"] for s in (0, 1)]
    assert kd_row["gain"][0] == pytest.approx(sum(diffs) / 2)
    assert "## Gain over student-alone" in (out / "report" / "report.md").read_text()
    assert (out / "report" / "bars.png").stat().st_size > 1000
    assert "Gain over student-alone" in (out / "report" / "report.html").read_text()

    # again: everything reused, nothing retrained
    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in names}
    assert main(argv) == 0
    assert "[8/8] dkd-seed1" in capsys.readouterr().out
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in names} == stamps

    # an interrupted run (summary not yet written) is resumed from its checkpoint, to the same result
    (out / "kd-seed1" / "summary.json").unlink()
    assert main(argv) == 0
    again = json.loads((out / "kd-seed1" / "summary.json").read_text())
    assert again["top1_last"] == summaries["kd-seed1"]["top1_last"]
    assert again["steps"] == summaries["kd-seed1"]["steps"]

    # other settings in the same folder: refused before anything trains
    capsys.readouterr()
    assert main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'teacher-seed0'} holds a run with other schedule than this pipeline asks for" in err


def test_report_baseline_flag_prints_the_gain_table(tmp_path, capsys):
    run_compare(copy.deepcopy(TINY), ["kd"], [0], tmp_path / "c", teacher_model="resnet8", progress=False)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "c" / "kd-seed0"), str(tmp_path / "c" / "student-alone-seed0"),
                 "--baseline", "student-alone", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert "gain over student-alone, paired by seed" in printed
    assert "| kd |" in printed or "| student-alone |" in printed
    assert main(["report", str(tmp_path / "c" / "kd-seed0"), "--baseline", "nobody"]) == 2
    assert "--baseline: baseline 'nobody' is not a group of this report; the groups are kd" in capsys.readouterr().err


def test_a_run_saved_before_a_config_key_existed_is_still_the_same_run(tmp_path):
    """A folder's config.yaml written before kdforge added a key (here optim.dot_delta) is compared with that
    key at its default, as --resume does: the finished run is reused, not refused."""
    import yaml

    from kdforge.config import config_from_dict, config_to_dict
    from kdforge.recipes.runs import check_folder, plan_run

    data = plan_run(copy.deepcopy(TINY), tmp_path, "old", seed=0, losses={"ce": 1.0})
    saved = config_to_dict(config_from_dict(data))
    del saved["optim"]["dot_delta"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    check_folder(data)  # no error
    saved["optim"]["lr"] = saved["optim"]["lr"] * 2
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match="holds a run with other optim"):
        check_folder(data)
