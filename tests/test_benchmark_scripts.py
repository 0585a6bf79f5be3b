"""The benchmark scripts: the CIFAR-100 shell recipes issue the right kdforge commands (run with a stand-in
`kdforge`), and the Python benchmarks that drive the engine still run on it (tiny arguments)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdforge.config import load_config

ROOT = Path(__file__).parent.parent


def commands(tmp_path, script, **env):
    """The kdforge command lines `script` runs, as argument lists, with a stand-in kdforge."""
    log = tmp_path / "calls"
    fake = tmp_path / "bin" / "kdforge"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\t" "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, **env, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / "benchmarks" / script)], check=True, env=env, capture_output=True)
    return [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]


def configs_of(argv):
    files = [a for a in argv[1:] if a.endswith(".yaml")]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    return load_config([ROOT / f for f in files], sets)


def test_pursuhint_script_runs_teacher_selection_and_every_comparison(tmp_path):
    calls = commands(tmp_path, "pursuhint_cifar100.sh", SEEDS="0 1", DATA="/data", EXTRA="")
    assert calls[0][0] == "train" and configs_of(calls[0]).student.model == "resnet110"
    assert calls[1][0] == "hints"
    runs = [configs_of(c) for c in calls[2:]]
    assert len(runs) == 2 * 2 * 2 * 2 and all(c[0] == "train" for c in calls[2:])  # seeds x students x methods x hints
    assert len({r.name for r in runs}) == len(runs)
    for r in runs:
        assert r.data.root == "/data" and r.teacher.checkpoint == "runs/cifar100-teacher-resnet110"
        assert r.hints.select in ("auto", "stage_ends") and f"seed{r.seed}" in r.name
    assert {r.student.model for r in runs} == {"resnet20", "resnet32"}


def test_table_script_runs_each_teacher_then_each_method(tmp_path):
    calls = commands(tmp_path, "cifar100_table.sh", PAIRS="resnet56-resnet20", METHODS="kd at", DATA="d")
    names = [configs_of(c).name for c in calls]
    assert names == ["cifar100-teacher-resnet56", "cifar100-resnet56-resnet20-kd", "cifar100-resnet56-resnet20-at"]


def test_table_script_uses_published_teacher_files_instead_of_training(tmp_path):
    teachers = tmp_path / "save" / "models"
    (teachers / "ResNet50_vanilla").mkdir(parents=True)  # RepDistiller's own spelling of the folder
    (teachers / "ResNet50_vanilla" / "ckpt_epoch_240.pth").write_bytes(b"")
    (teachers / "resnet56_vanilla").mkdir()
    (teachers / "resnet56_vanilla" / "ckpt_epoch_240.pth").write_bytes(b"")
    calls = commands(tmp_path, "cifar100_table.sh", PAIRS="resnet56-resnet20 resnet50-mobilenetv2 vgg13-vgg8",
                     METHODS="kd", DATA="d", TEACHERS=str(teachers))
    runs = [configs_of(c) for c in calls]
    assert [r.name for r in runs] == ["cifar100-resnet56-resnet20-kd", "cifar100-resnet50-mobilenetv2-kd",
                                      "cifar100-teacher-vgg13", "cifar100-vgg13-vgg8-kd"]  # vgg13: no file, trained
    assert (runs[0].teacher.checkpoint, runs[0].teacher.model) == (
        str(teachers / "resnet56_vanilla" / "ckpt_epoch_240.pth"), "resnet56")
    assert runs[1].teacher.checkpoint == str(teachers / "ResNet50_vanilla" / "ckpt_epoch_240.pth")
    assert runs[3].teacher.checkpoint == "runs/cifar100-teacher-vgg13"


def test_sftn_script_runs_the_pipeline_for_each_pair(tmp_path):
    calls = commands(tmp_path, "sftn_cifar100.sh", DATA="/data", METHODS="kd crd", SEEDS="0")
    assert [c[0] for c in calls] == ["sftn"] * 3
    for argv in calls:
        base = load_config([ROOT / argv[1]], [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
        assert base.data.name == "cifar100" and base.data.root == "/data" and base.schedule.epochs == 240
        teacher, student = argv[argv.index("--teacher") + 1], argv[argv.index("--student") + 1]
        assert argv[argv.index("--out") + 1] == f"runs/cifar100-sftn-{teacher}-{student}"
        assert ("--student-set" in argv) == student.startswith("shufflenet")
    assert {(c[c.index("--teacher") + 1], c[c.index("--student") + 1]) for c in calls} == {
        ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "shufflenetv2")}


def test_netgraft_script_passes_the_papers_schedule_and_data(tmp_path):
    (call,) = commands(tmp_path, "netgraft_cifar.sh", DATASET="cifar100", DATA="/data", SEEDS="0 1", TEACHER="runs/t")
    assert call[0] == "netgraft" and call[1] == "configs/cifar100/netgraft/base.yaml"
    assert call[call.index("--schedule") + 1] == "cifar100"
    assert call[call.index("--teacher") + 1] == "runs/t" and call[call.index("--out") + 1] == "runs/cifar100-netgraft"
    assert call[call.index("--seeds") + 1:call.index("--seeds") + 3] == ["0", "1"]
    cfg = configs_of(call)
    assert cfg.data.name == "cifar100" and cfg.data.root == "/data" and cfg.data.augment.crop_padding == 4


def test_ddp_benchmark_data_is_a_cifar10_folder_the_loader_reads(tmp_path):
    import importlib.util

    from kdforge.data import load_dataset

    spec = importlib.util.spec_from_file_location("ddp_throughput", ROOT / "benchmarks" / "ddp_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_random_cifar10(tmp_path, train_images=64)
    train, test = load_dataset("cifar10", str(tmp_path), "train"), load_dataset("cifar10", str(tmp_path), "test")
    assert tuple(train.images.shape) == (65, 3, 32, 32) and len(test) == 100  # 5 batches of ceil(64 / 5)
    assert train.classes[0] == "airplane" and 0 <= int(train.labels.min()) <= int(train.labels.max()) < 10


def test_export_speed_script_checks_every_runtime_against_pytorch(tmp_path):
    """The inference benchmark's files reproduce eager PyTorch, and its timer reports every runtime."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("export_speed", ROOT / "benchmarks" / "export_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = bench.runners("resnet8", 16, 10, tmp_path)
    assert set(run) == {"pytorch eager", "torchscript", "onnxruntime"}
    assert bench.check(run, 16) <= bench.TOLERANCE
    # a runtime whose outputs are wrong is refused, by name: slightly off, another model's, or NaN
    other = bench.build_model("resnet8", num_classes=10).eval()  # other random weights
    def off(x):  # 10x the tolerance, relative to the largest logit as check() measures
        z = run["onnxruntime"](x)
        return z + 10 * bench.TOLERANCE * max(1.0, z.abs().max().item())

    for wrong in (off, lambda x: other(x).detach(),
                  lambda x: run["onnxruntime"](x) * float("nan")):
        with pytest.raises(SystemExit, match="the onnxruntime export differs from PyTorch"):
            bench.check({**run, "onnxruntime": wrong}, 16)
    rates = bench.time_rounds(run, 16, batch=2, rounds=1, seconds=0.01)
    assert set(rates) == set(run) and all(rate > 0 for rate in rates.values())


def test_keep_results_copies_the_small_text_files_and_never_a_checkpoint(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from keep_results import keep
    finally:
        sys.path.pop(0)
    src = tmp_path / "bench"
    for run in ("teacher-seed0", "shots1/seed0/stage1-head"):
        (src / run / "checkpoints").mkdir(parents=True)
        for name in ("summary.json", "config.yaml", "log.jsonl", "curves.png", "checkpoints/last.pt"):
            (src / run / name).write_text(f"{run}/{name}")
    (src / "results.md").write_text("table")
    (src / "report").mkdir()
    (src / "report" / "report.md").write_text("report")
    (src / "report" / "curves.png").write_text("png")
    assert keep(src, tmp_path / "kept") == 2 * 3 + 2
    kept = sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert kept == sorted(["results.md", "report/report.md",
                           *(f"{run}/{name}" for run in ("teacher-seed0", "shots1/seed0/stage1-head")
                             for name in ("summary.json", "config.yaml", "log.jsonl"))])
    assert (tmp_path / "kept" / "teacher-seed0" / "log.jsonl").read_text() == "teacher-seed0/log.jsonl"


def benchmark_process(script, *args):
    """benchmarks/`script` run to its end on one torch thread (the finished process)."""
    return subprocess.run([sys.executable, script, *args], cwd=ROOT / "benchmarks", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=600)


def run_benchmark(script, *args):
    """Run benchmarks/`script` with tiny arguments; its printed output (it must exit 0)."""
    done = benchmark_process(script, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


TINY_PAIR = ("--teacher", "resnet8", "--student", "resnet8", "--batch", "8")


@pytest.mark.slow
def test_speed_benchmark_runs_on_the_engine_it_times():
    out = run_benchmark("speed.py", *TINY_PAIR, "--steps", "2", "--rounds", "1", "--precisions", "fp32")
    row = [line.split() for line in out.splitlines() if line.startswith("fp32")]
    assert len(row) == 1 and float(row[0][3]) > 0  # step img/s


@pytest.mark.slow
def test_method_cost_times_methods_and_the_cifar100_method_configs():
    out = run_benchmark("method_cost.py", *TINY_PAIR, "--steps", "1", "--warmup", "1",
                        "--methods", "kd", "mlkd_strong", "kd_dot")
    timed = {line.split()[0] for line in out.splitlines()[2:]}
    assert timed == {"kd", "mlkd_strong", "kd_dot"}
    bad = benchmark_process("method_cost.py", "--methods", "no_such")
    assert bad.returncode != 0 and "'no_such' is neither a method" in bad.stderr


@pytest.mark.slow
def test_ekd_cost_and_teacher_cache_benchmarks_run():
    out = run_benchmark("ekd_cost.py", "--full", "resnet20", "--subnets", "resnet8", "--rounds", "1",
                        "--steps", "1", "--warmup", "1", "--batch", "8", "--classes", "10")
    assert "ekd (switchable BN)" in out
    out = run_benchmark("teacher_cache.py", *TINY_PAIR[:4], "--shots", "2", "--epochs", "2", "--batch", "10")
    assert "| teacher cache |" in out


@pytest.mark.slow
def test_streaming_benchmark_times_the_loader_per_worker_count(tmp_path):
    out = run_benchmark("streaming.py", "--images", "24", "--batch", "4", "--workers", "0", "1", "--steps", "1",
                        "--fed-batches", "2", "--root", str(tmp_path / "jpegs"), "--out", str(tmp_path / "r.json"))
    result = json.loads((tmp_path / "r.json").read_text())
    assert [row["workers"] for row in result["loader"]] == [0, 1] and result["images"] == 24
    assert all(row["loader_img_per_s"] > 0 and row["fed_step_img_per_s"] > 0 for row in result["loader"])
    assert "| workers | loader alone, img/s |" in out
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.JPEG"))) == 24
