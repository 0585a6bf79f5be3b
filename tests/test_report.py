"""`kdforge report`: grouping, numbers, figures and the HTML page, on real tiny runs of the engine."""

import base64
import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.models.complexity import format_macs
from kdforge.report import write_report
from kdforge.report.figures import CURVES_PX, SCATTER_PX
from kdforge.report.collect import Run
from kdforge.report.grouping import checkpoint_run_name, group_runs, strip_seed

SEEDS = (0, 1)
BASE = {"data": {"name": "digits", "batch_size": 20, "few_shot": {"shots": 6, "labels": True}},
        "schedule": {"name": "constant", "epochs": 2},
        "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}}
#: run name prefix -> (student, losses, teacher run prefix)
ROLES = {"small": ("resnet8", {"ce": 1.0}, None),
         "wide": ("resnet14", {"ce": 1.0}, None),
         "kd": ("resnet8", {"ce": 0.5, "kd": {"weight": 0.5, "T": 4.0}, "at": 0.0}, "wide")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A folder of 6 finished runs: small/wide (ce) and kd (from the wide run of the same seed), 2 seeds each."""
    root = tmp_path_factory.mktemp("runs")
    for seed in SEEDS:
        for prefix, (model, losses, teacher) in ROLES.items():
            data = {**BASE, "name": f"{prefix}-seed{seed}", "seed": seed, "output_dir": str(root),
                    "student": {"model": model}, "losses": losses}
            if teacher:
                data["teacher"] = {"checkpoint": str(root / f"{teacher}-seed{seed}")}
            train_from_config(config_from_dict(data))
    return root


def summaries(folders) -> list[dict]:
    return [json.loads((Path(f) / "summary.json").read_text()) for f in folders]


def test_strip_seed():
    assert strip_seed("student-KD-seed0") == "student-KD"
    assert strip_seed("kd_seed_12") == "kd"
    assert strip_seed("kdseed3") == "kd"
    assert strip_seed("fitnet-s2") == "fitnet"
    assert strip_seed("resnet8") == "resnet8"


def test_runs_that_differ_by_seed_form_one_group(runs, tmp_path):
    result = write_report([runs], out=tmp_path)
    groups = {g["label"]: g for g in result["groups"]}
    assert sorted(groups) == ["kd", "small", "wide"]
    for label, group in groups.items():
        assert [Path(p).name for p in group["runs"]] == [f"{label}-seed{s}" for s in SEEDS]
        assert group["seeds"] == list(SEEDS)
        assert "seed" not in group["key"]
    kd = groups["kd"]
    teachers = [s["teacher"] for s in summaries(kd["runs"])]
    assert len(set(teachers)) == 2  # one teacher per seed ...
    assert kd["key"]["teacher"]["checkpoint"] == {"run": "wide", "model": "resnet14"}  # ... one teacher run: one group
    # the teacher column names the checkpoint the students used: each teacher run's last epoch
    assert kd["fields"] == {"method": "ce+kd", "student": "resnet8", "teacher": "resnet14 (last.pt)",
                            "dataset": "digits"}
    assert groups["small"]["fields"]["teacher"] == "—"


def _run(name: str, teacher: str | None = None, few_shot_seed: int = 0, max_steps=None, steps: int = 10) -> Run:
    """A run as read from disk, made by hand: only what grouping looks at."""
    config = {"seed": int(name[-1]), "data": {"name": "digits", "few_shot": {"shots": 5, "seed": few_shot_seed}},
              "student": {"model": "resnet8", "checkpoint": None}, "losses": {"ce": 0.5, "kd": 0.5},
              "train": {"max_steps": max_steps}}
    if teacher:
        config["teacher"] = {"model": None, "checkpoint": teacher}
    run = Run(Path("runs") / name, {"name": name, "steps": steps}, config, [])
    run.teacher_model = "resnet14" if teacher else None
    return run


def test_a_run_saved_before_a_config_key_existed_groups_with_the_same_settings_today():
    """Seeds 0 and 1 saved before optim.dot_delta existed, seed 2 after (the key at its default): one row;
    the same key at another value is another row."""
    from kdforge.config import config_from_dict, config_to_dict

    def saved(run_name, **optim):
        config = config_to_dict(config_from_dict({"seed": int(run_name[-1]), "losses": {"ce": 0.1, "kd": 0.9},
                                                  "optim": optim}))
        return Run(Path("runs") / run_name, {"name": run_name, "steps": 10}, config, [])

    old = [saved("kd-seed0"), saved("kd-seed1")]
    for run in old:
        del run.config["optim"]["dot_delta"]
    runs = [*old, saved("kd-seed2"), saved("kd-seed3", name="dot", dot_delta=0.05)]
    assert [[r.name for r in g.runs] for g in group_runs(runs)] == [["kd-seed0", "kd-seed1", "kd-seed2"],
                                                                    ["kd-seed3"]]


def test_grouping_keeps_apart_what_differs_besides_seeds():
    """Per-seed teachers, few-shot draws and checkpoint paths group; another teacher run, max_steps or
    a different number of steps does not."""
    runs = [_run("kd-seed0", "runs/t-seed0"), _run("kd-seed1", "runs/t-seed1/checkpoints/best.pt", few_shot_seed=1),
            _run("kdsftn-seed0", "runs/sftn-t-seed0"), _run("kdsftn-seed1", "runs/sftn-t-seed1"),
            _run("short-seed0", "runs/t-seed0", max_steps=3), _run("stopped-seed0", "runs/t-seed0", steps=4)]
    groups = group_runs(runs)
    assert [[r.name for r in g.runs] for g in groups] == [
        ["kd-seed0", "kd-seed1"], ["kdsftn-seed0", "kdsftn-seed1"], ["short-seed0"], ["stopped-seed0"]]
    few_shot = groups[0].key["data"]["few_shot"]  # with today's defaults filled in
    assert few_shot["shots"] == 5 and "seed" not in few_shot  # every seed is out of the key
    assert checkpoint_run_name("models/r8.pt") == "r8" and checkpoint_run_name("runs/t-seed2/") == "t-seed2"


def test_numbers_equal_the_summaries(runs, tmp_path):
    result = write_report([runs], out=tmp_path)
    saved = json.loads(Path(result["files"]["json"]).read_text())
    markdown = Path(result["files"]["markdown"]).read_text()
    assert markdown == result["markdown"]
    for group in saved["groups"]:
        runs_summaries = summaries(group["runs"])
        for metric in ("top1_last", "top1_best", "params", "macs", "train_img_per_s", "wall_time_s"):
            values = [s[metric] for s in runs_summaries]
            stats = group["metrics"][metric]
            assert stats["values"] == values
            assert stats["mean"] == pytest.approx(statistics.mean(values), rel=1e-12)
            assert stats["std"] == pytest.approx(statistics.stdev(values), rel=1e-9, abs=1e-12)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {group['label']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        top1 = [s["top1_last"] for s in runs_summaries]
        best = [s["top1_best"] for s in runs_summaries]
        wall = [s["wall_time_s"] for s in runs_summaries]
        assert cells[4] == "0, 1 (2)"
        assert cells[5] == f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}"
        assert cells[6] == f"{statistics.mean(best):.2f} ± {statistics.stdev(best):.2f}"
        assert cells[7] == f"{runs_summaries[0]['params']:,}"
        assert cells[8] == format_macs(runs_summaries[0]["macs"])  # formatting itself: test_models
        speeds = [s["images_seen"] / s["train_time_s"] for s in runs_summaries]  # train_time_s: rounded to 1 ms
        assert [s["train_img_per_s"] for s in runs_summaries] == pytest.approx(speeds, rel=5e-4 / min(
            s["train_time_s"] for s in runs_summaries))
        assert cells[9] == f"{statistics.mean(s['train_img_per_s'] for s in runs_summaries):,.0f}"
        assert cells[10] == f"{statistics.mean(wall):.1f} ± {statistics.stdev(wall):.1f}"
        assert all(f"`{path}`" in markdown for path in group["runs"])


def test_by_fields_merge_groups(runs, tmp_path):
    by_method = {g["label"]: g for g in write_report([runs], out=tmp_path, by=["method"])["groups"]}
    assert sorted(by_method) == ["ce resnet8 / resnet14", "kd"]  # 'at' has weight 0: not part of the method
    ce = by_method["ce resnet8 / resnet14"]
    assert sorted(Path(p).name for p in ce["runs"]) == sorted(f"{r}-seed{s}" for r in ("small", "wide") for s in SEEDS)
    top1 = [s["top1_last"] for s in summaries(ce["runs"])]
    assert ce["metrics"]["top1_last"]["mean"] == pytest.approx(statistics.mean(top1))
    assert ce["metrics"]["top1_last"]["std"] == pytest.approx(statistics.stdev(top1))
    by_student = write_report([runs], out=tmp_path, by="student,losses.kd.T")["groups"]
    assert [(g["key"]["student"], g["key"]["losses.kd.T"], len(g["runs"])) for g in by_student] == [
        ("resnet8", 4.0, 2), ("resnet8", None, 2), ("resnet14", None, 2)]  # in the order of their first run


def _png_ok(path: str, size: tuple[int, int]) -> None:
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 0 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # not blank


def test_figures_and_self_contained_html(runs, tmp_path):
    files = write_report([runs], out=tmp_path)["files"]
    _png_ok(files["curves"], CURVES_PX)
    _png_ok(files["scatter"], SCATTER_PX)
    _png_ok(files["bars"], (880, 275))  # 8 x 2.5 inches at 110 dpi: the least height, for 3 groups
    page = Path(files["html"]).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(f).name for f in files.values())
    links = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, flags=re.IGNORECASE)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "http" not in re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    embedded = [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert embedded == [Path(files[k]).read_bytes() for k in ("bars", "curves", "scatter")]
    assert "<table>" in page and page.count("<tr>") == 1 + 3  # header + one row per group
    assert "6 runs in 3 groups" in page


def test_missing_metrics_old_summaries_and_escaping(runs, tmp_path):
    """A summary without macs/teacher_model (older kdforge) gets them counted; a run without epoch
    records or top-1 is reported without crashing; names are escaped in the page."""
    old = tmp_path / "old"
    for name in ("kd-seed0", "wide-seed0"):
        shutil.copytree(runs / name, old / name)
    summary_file = old / "kd-seed0" / "summary.json"
    original = json.loads(summary_file.read_text())
    stripped = {k: v for k, v in original.items() if k not in ("macs", "teacher_model")}
    summary_file.write_text(json.dumps(stripped))
    odd = old / "wide-seed0"
    (odd / "log.jsonl").unlink()
    odd_summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**odd_summary, "name": "<b>odd</b>", "top1_last": None}))

    result = write_report([old], out=tmp_path / "report")
    groups = {g["names"][0]: g for g in result["groups"]}
    kd = groups["kd-seed0"]
    assert kd["metrics"]["macs"]["values"] == [original["macs"]]  # counted from the checkpoint
    assert original["teacher_model"] == "resnet14"
    assert kd["fields"]["teacher"] == "resnet14 (last.pt)"  # architecture read from the teacher run
    assert groups["<b>odd</b>"]["metrics"]["top1_last"] == {"values": [None], "n": 0, "mean": None, "std": None}
    assert any("no epoch records" in note for note in result["notes"])
    assert any("no top-1" in note for note in result["notes"])
    page = Path(result["files"]["html"]).read_text()
    assert "&lt;b&gt;odd&lt;/b&gt;" in page and "<b>odd</b>" not in page
    _png_ok(result["files"]["curves"], CURVES_PX)
    _png_ok(result["files"]["scatter"], SCATTER_PX)


def test_default_out_and_repeated_runs(runs):
    folders = [runs / "small-seed0", runs / "small-seed1", runs / "small-seed0", runs]
    result = write_report(folders)
    assert Path(result["out"]) == runs.resolve() / "report"
    assert sum(len(g["runs"]) for g in result["groups"]) == 6  # each run once
    assert Path(result["files"]["html"]).is_file()
    shutil.rmtree(result["out"])


def test_cli_writes_the_report(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["report", str(runs), "--by", "method", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| kd | ce+kd | resnet14 (last.pt) | resnet8 | 0, 1 (2) |" in printed
    for name in ("report.md", "report.json", "report.html", "curves.png", "scatter.png"):
        assert (out / name).is_file() and f"wrote {out / name}" in printed


def _unfinished(runs: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "unfinished"
    shutil.copytree(runs / "small-seed0", folder)
    (folder / "summary.json").unlink()
    return folder


@pytest.mark.parametrize("case, words", [
    ("missing", ["does not exist", "summary.json"]),
    ("empty", ["neither a run folder nor a folder of runs", "summary.json"]),
    ("unfinished", ["unfinished run", "checkpoints/", "summary.json"]),
    ("by", ["--by", "'optim.lrr'", "Did you mean: optim.lr", "method, student, teacher, dataset"]),
])
def test_cli_bad_input_is_one_line(runs, tmp_path, capsys, case, words):
    (tmp_path / "empty").mkdir()
    path = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "unfinished": None, "by": runs}[case]
    path = path or _unfinished(runs, tmp_path)
    extra = ["--by", "method,optim.lrr"] if case == "by" else []
    assert main(["report", str(path), "--out", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kdforge report: error: ")
    assert case == "by" or str(path) in err
    assert all(word in err for word in words), err
    assert not (tmp_path / "out").exists()


def test_a_depth_dynamic_run_gives_a_row_per_path(tmp_path):
    """A ddnn run's sub-nets each get a row: the summary's per-path top-1, params and MACs, and that
    path's logged top-1 curve; the full net keeps the run's best top-1, the others have none."""
    data = {**BASE, "name": "ekd-seed0", "seed": 0, "output_dir": str(tmp_path / "runs"),
            "student": {"model": "ddnn", "options": {"full": "resnet14", "subnets": ["resnet8"]}},
            "losses": {"ekd": 1.0}}
    summary = train_from_config(config_from_dict(data))
    result = write_report([tmp_path / "runs"], out=tmp_path / "report")
    rows = {g["label"]: g for g in result["groups"]}
    assert sorted(rows) == ["ekd [resnet14]", "ekd [resnet8]"]
    for name, row in (("resnet14", rows["ekd [resnet14]"]), ("resnet8", rows["ekd [resnet8]"])):
        path = summary["paths"][name]
        assert row["fields"]["student"] == name
        assert [row["metrics"][m]["values"][0] for m in ("top1_last", "params", "macs")] == \
            [path["top1_last"], path["params"], path["macs"]]
    assert rows["ekd [resnet14]"]["metrics"]["top1_best"]["values"] == [summary["top1_best"]]
    assert rows["ekd [resnet8]"]["metrics"]["top1_best"]["values"] == [None]
    assert "1 run in 2 groups" in result["markdown"]


def test_teacher_column_names_the_checkpoint_and_what_chose_it():
    from kdforge.report.grouping import teacher_label

    run = _run("kd-seed0", teacher="runs/t-seed0")
    assert teacher_label(run) == "resnet14"  # an older summary: no teacher_checkpoint recorded
    run.summary["teacher_checkpoint"] = {"file": "runs/t-seed0/checkpoints/best.pt", "which": "best",
                                         "selected_on": "val (0.1 of each class of train, seed 0)"}
    assert teacher_label(run) == "resnet14 (best.pt on val (0.1 of each class of train, seed 0))"
    run.summary["teacher_checkpoint"] = {"file": "runs/t-seed0/checkpoints/last.pt", "which": "last",
                                         "selected_on": None}
    assert teacher_label(run) == "resnet14 (last.pt)"


def test_img_per_s_column_is_the_mean_of_the_runs_rates(tmp_path):
    """Summaries with known timings: the column is the mean over a group's runs of images_seen / train_time_s
    (each run's rate, as the trainer writes train_img_per_s), not the pooled images over pooled time;
    a group whose summaries lack the rate shows '—'. Without config.yaml, runs group by their summaries."""
    timings = {"fast-seed0": (9000, 3.0), "fast-seed1": (9000, 9.0), "fast-seed2": (10000, 2.0),
               "slow-seed0": (500, 4.0)}
    for name, (images, seconds) in timings.items():
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        fast = name.startswith("fast")
        summary = {"name": name, "seed": int(name[-1]), "student": "resnet8" if fast else "resnet14",
                   "dataset": "digits", "losses": {"ce": 1.0}, "params": 1000, "macs": 5000, "steps": 10,
                   "top1_last": 50.0, "top1_best": 50.0, "images_seen": images, "train_time_s": seconds,
                   "wall_time_s": seconds + 1}
        if fast:
            summary["train_img_per_s"] = images / seconds
        (folder / "summary.json").write_text(json.dumps(summary))
    result = write_report([tmp_path / "runs"], out=tmp_path / "report")
    cells = {}
    for line in result["table"].splitlines()[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        cells[row[0]] = row[9]
    mean = statistics.mean(timings[f"fast-seed{s}"][0] / timings[f"fast-seed{s}"][1] for s in range(3))
    assert mean == pytest.approx(3000.0)  # (3000 + 1000 + 5000) / 3; pooled it would be 28000 / 14 s = 2000
    assert cells == {"fast": "3,000", "slow": "—"}
    groups = {g["label"]: g for g in result["groups"]}
    assert groups["fast"]["metrics"]["train_img_per_s"]["values"] == pytest.approx([3000.0, 1000.0, 5000.0])


@pytest.mark.parametrize("losses, method", [
    ({"ce": 1.0, "at": 0.0}, "ce"),  # weight 0 and no stage: not part of the method
    ({"ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 2}}, "ce+ab (stage)"),
    ({"ce": 1.0, "ab": 0.0}, "ce+ab (stage)"),  # AB's own default stage (3 epochs)
    ({"ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 0}}, "ce"),
    ({"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}}, "ce+kd"),
])
def test_method_names_a_weight_zero_method_that_acts_through_its_stage(losses, method):
    from kdforge.report.collect import Run
    from kdforge.report.grouping import method_of

    assert method_of(Run(Path("r"), {}, {"losses": losses}, [])) == method
