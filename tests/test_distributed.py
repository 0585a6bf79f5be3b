"""Data-parallel training: 2 gloo processes on the CPU take the same steps as 1 process on the global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kdforge.config import config_from_dict
from kdforge.data import load_dataset
from kdforge.engine import Trainer, load_checkpoint, train_from_config
from kdforge.engine.distributed import Distributed, may_skip_parameters
from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint
from kdforge.engine.run import build_zoo_model
from kdforge.errors import ConfigError
from kdforge.methods import Losses

ROOT = Path(__file__).resolve().parents[1]


class NoBatchNorm(nn.Module):
    """A small student whose forward does not depend on how the batch is split (no BatchNorm)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _run(rank: int, world_size: int, out: str, rendezvous: str) -> None:
    """One process of a run: CE + KD + VID (whose regressors are trained adapters), SGD, 20 steps of 64."""
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = NoBatchNorm()
    torch.manual_seed(1)
    teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "teacher")
    cfg = config_from_dict({
        "name": "run", "seed": 3, "output_dir": out, "optim": {"lr": 0.05},
        "data": {"batch_size": 64, "eval_batch_size": 50, "augment": {"crop_padding": 0, "hflip": False}},
        "schedule": {"name": "cosine", "epochs": 2}, "losses": {"ce": 0.5, "kd": 0.5},
        "train": {"max_steps": 20, "log_every": 5, "precision": "fp32", "device": "cpu", "progress": False,
                  "tensorboard": False}})
    losses = Losses.from_config({"ce": 0.5, "kd": 0.5, "vid": {"weight": 1.0, "student_layers": ["conv2"],
                                                                   "teacher_layers": ["layer2"]}})
    train = load_dataset("digits", None, "train")
    test = load_dataset("digits", None, "test")
    Trainer(student, losses, train, test, teacher=teacher, config=cfg, run_dir=Path(out) / "run").fit()
    if world_size > 1:
        dist.destroy_process_group()


def test_two_gloo_processes_take_the_same_steps_as_one(tmp_path):
    """Student and VID's regressors after 20 SGD steps of batch 64: 2 processes x 32 images == 1 process x 64,
    within float rounding (the sums run in another order); evaluation counts are summed over the ranks."""
    torch.manual_seed(0)
    initial = NoBatchNorm().state_dict()
    mp.spawn(_run, args=(1, str(tmp_path / "one"), ""), nprocs=1)
    mp.spawn(_run, args=(2, str(tmp_path / "two"), str(tmp_path / "rendezvous")), nprocs=2)
    one, two = (load_checkpoint(tmp_path / n / "run", "last") for n in ("one", "two"))
    assert one["state"]["step"] == two["state"]["step"] == 20
    for part in ("student", "losses"):
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=1e-5, atol=1e-6, msg=f"{part}.{key}")
    moved = min((one["student"][k] - initial[k]).abs().max() for k in initial)
    assert moved > 1e-3  # every tensor trained: the equality above is not that of untouched weights
    test = load_dataset("digits", None, "test")
    for ckpt in (one, two):  # the two ranks' shares of the 360 test images add up to the whole
        model = NoBatchNorm()
        model.load_state_dict(ckpt["student"])
        mean, std = torch.tensor(test.mean)[:, None, None], torch.tensor(test.std)[:, None, None]
        with torch.no_grad():
            predicted = model((test.images.float() / 255 - mean) / std).argmax(1)
        top1 = 100.0 * (predicted == test.labels).sum().item() / len(test)
        assert ckpt["state"]["history"][-1]["eval_top1"] == pytest.approx(top1, abs=1e-9)
    for a, b in zip(one["state"]["history"], two["state"]["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["train_top1"] == a["train_top1"]
        assert b["eval_top1"] == pytest.approx(a["eval_top1"], abs=1e-9)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cfg = config_from_dict({"name": "teacher", "output_dir": str(out), "student": {"model": "resnet8"},
                            "schedule": {"epochs": 1}, "train": {"max_steps": 10, "progress": False,
                                                                  "tensorboard": False, "device": "cpu"}})
    train_from_config(cfg)
    return out / "teacher"


def test_kdforge_train_nproc_2_runs_under_torchrun_and_only_rank_0_writes(tmp_path, teacher):
    sets = {"output_dir": tmp_path, "name": "two", "student.model": "resnet8", "teacher.checkpoint": teacher,
            "losses.ce": 0.5, "losses.kd": 0.5, "losses.fitnet": 1.0, "data.batch_size": 64,
            "schedule.epochs": 1, "train.max_steps": 12, "train.log_every": 4, "train.device": "cpu",
            "train.precision": "fp32", "train.tensorboard": False, "train.progress": False}
    done = subprocess.run([sys.executable, "-m", "kdforge", "train", "--nproc", "2",
                           *(f"--set={k}={v}" for k, v in sets.items())],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"processes": 2') == 1  # one summary printed, by rank 0
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 12
    records = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [4, 8, 12]
    whole = evaluate_checkpoint(tmp_path / "two", "last", device="cpu", precision=summary["precision"])
    assert summary["top1_last"] == pytest.approx(whole["top1"], abs=0.6)  # other batches' fp32 rounding: <= 2 images


def test_distributed_settings_are_checked_before_training(tmp_path):
    train = load_dataset("digits", None, "train").subset(torch.arange(64))
    as_rank0_of_2 = Distributed(rank=0, world_size=2)

    def build(losses, batch=32, optim=None, **train_cfg):
        cfg = config_from_dict({"name": "x", "output_dir": str(tmp_path), "data": {"batch_size": batch},
                                "optim": optim or {}, "train": {"device": "cpu", "progress": False, **train_cfg}})
        student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
        teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "teacher")
        return Trainer(student, Losses.from_config(losses), train, teacher=teacher, config=cfg,
                       distributed=as_rank0_of_2)

    with pytest.raises(ConfigError, match=r"losses \['crd'\] keep per-image state"):
        build({"ce": 1, "crd": 0.8}).prepare()
    with pytest.raises(ConfigError, match="optim.name: dot is not supported in distributed runs yet"):
        build({"ce": 1, "kd": 0.9}, optim={"name": "dot"}).prepare()
    with pytest.raises(ConfigError, match="data.batch_size=33 is the global batch and must divide evenly over 2"):
        build({"ce": 1}, batch=33).prepare()
    with pytest.raises(ConfigError, match="train.sync_bn: SyncBatchNorm runs on GPUs only"):
        build({"ce": 1}, sync_bn=True).prepare()


def test_ddp_looks_for_unused_parameters_only_where_a_step_can_skip_some():
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    assert not may_skip_parameters(student, Losses.from_config({"ce": 1, "fitnet": 1}))
    assert may_skip_parameters(student, Losses.from_config({"ce": 1, "ab": 1}))  # connectors: pre-training only
    ddnn = build_zoo_model(config_from_dict({"student": {"model": "ddnn"}}).student, 10, 1, "student")
    assert may_skip_parameters(ddnn, Losses.from_config({"ce": 1}))


def test_nproc_2_with_bad_input_is_one_line_and_exit_code_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kdforge", "train", "--nproc", "2", "--set=data.name=cifar10",
                           f"--set=data.root={tmp_path}/missing", f"--set=output_dir={tmp_path}"],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()]  # rank 0's message alone, no torchrun report
    assert done.stderr.startswith("kdforge train: error: cifar10: data folder") and "missing" in done.stderr
