"""Runs survive signals, kills and NaNs: nothing is lost beyond the last checkpoint, no bad one is written."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from digits_trainer import small_trainer
from kill_run import sigkill_after
from kdforge.engine import NonFiniteLossError, load_checkpoint
from kdforge.engine.checkpoint import atomic_save, remove_stale_temporaries
from kdforge.engine.interrupts import RunInterrupted
from kdforge.methods.base import Method

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(256, 64)


class Probe(Method):
    """Cross-entropy that can turn NaN, or send this process a signal, at chosen (1-based) steps."""

    name = "probe"
    needs_teacher = False
    needs_labels = True

    def __init__(self, nan_at=(), signal_at=None):
        super().__init__()
        self.nan_at, self.signal_at = set(nan_at), signal_at
        self.calls = 0

    def forward(self, out):
        self.calls += 1
        loss = F.cross_entropy(out.student_logits.float(), out.labels)
        if self.calls == self.signal_at:
            signal.raise_signal(signal.SIGTERM)  # handled by the trainer: finish the step, save, stop
        return loss * float("nan") if self.calls in self.nan_at else loss


def trainer(tmp_path, digits, name, probe=None, log_every=3, **train):
    return small_trainer(tmp_path, digits, name, probe or Probe(), seed=5, log_every=log_every, **train)


def same_weights(a, b, buffers=True):
    state = (lambda m: m.state_dict()) if buffers else (lambda m: dict(m.named_parameters()))
    return all(torch.equal(x, y) for x, y in zip(state(a).values(), state(b).values()))


def test_sigterm_saves_mid_epoch_and_resume_matches_an_uninterrupted_run(tmp_path, digits):
    """8 steps per epoch; SIGTERM during step 11 -> last.pt at step 11 with the epoch's running sums;
    the resumed run ends with the same weights and the same epoch records as one never stopped."""
    full = trainer(tmp_path, digits, "full")
    full.fit()
    stopped = trainer(tmp_path, digits, "stopped", Probe(signal_at=11))
    with pytest.raises(RunInterrupted, match="SIGTERM received: stopped after step 11"):
        stopped.fit()
    ckpt = load_checkpoint(tmp_path / "stopped", "last")
    assert (ckpt["state"]["step"], ckpt["state"]["epoch"], ckpt["state"]["batch_in_epoch"]) == (11, 1, 3)
    assert ckpt["state"]["epoch_partial"]["steps"] == 3
    resumed = trainer(tmp_path, digits, "stopped")
    resumed.fit(resume=True)
    assert same_weights(full.student, resumed.student)
    keys = ("epoch", "step", "train_probe", "train_top1", "eval_top1", "eval_loss")
    assert [[r[k] for k in keys] for r in full.state.history] == [[r[k] for k in keys] for r in resumed.state.history]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after fit


def test_checkpoint_every_steps_writes_last_inside_epochs(tmp_path, digits):
    t = trainer(tmp_path, digits, "every", checkpoint_every_steps=3, max_steps=7)
    saved = []
    real = t.checkpoint
    t.checkpoint = lambda with_optimizer=True: saved.append(t.state.step) or real(with_optimizer)
    t.fit()
    assert saved[:2] == [3, 6]  # then max_steps ends the run at step 7 with an epoch record
    assert load_checkpoint(tmp_path / "every", "last")["state"]["step"] == 7


def test_nan_stops_the_run_naming_loss_and_step_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    t = trainer(tmp_path, digits, "nan", Probe(nan_at={5}), checkpoint_every_steps=2, log_every=50)
    with pytest.raises(NonFiniteLossError, match=r"loss\(es\) probe became non-finite at step 5 \(epoch 1\)"):
        t.fit()
    ckpt = load_checkpoint(tmp_path / "nan", "last")
    assert ckpt["state"]["step"] == 4  # the save due at step 6 found the NaN first
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values() if v.is_floating_point())


def test_nan_skip_drops_only_that_steps_update(tmp_path, digits):
    two = trainer(tmp_path, digits, "two", max_steps=2)
    two.fit()
    skipped = trainer(tmp_path, digits, "skipped", Probe(nan_at={3}), nonfinite="skip", max_steps=3)
    summary = skipped.fit()
    assert summary["skipped_steps"] == 1 and summary["steps"] == 3
    # step 3 changed no parameter (its forward still moved the BatchNorm statistics)
    assert same_weights(two.student, skipped.student, buffers=False)
    assert skipped.state.history[-1]["skipped_steps"] == 1


def test_a_kill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL after the new file is written but before it replaces the old one."""
    target = tmp_path / "checkpoints" / "last.pt"
    atomic_save({"format": "kdforge-checkpoint/1", "value": torch.ones(3)}, target)
    marker = tmp_path / "writing"
    child = subprocess.Popen([sys.executable, "-c", f"""
import time, pathlib, torch
import kdforge.engine.checkpoint as c
def stall(fd):
    pathlib.Path({str(marker)!r}).touch()
    time.sleep(60)
c.os.fsync = stall
c.atomic_save({{"format": "kdforge-checkpoint/1", "value": torch.zeros(1000)}}, {str(target)!r})
"""], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the child never reached the save"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    leftovers = list(target.parent.glob(".last.pt.tmp-*"))
    assert leftovers  # the half-finished save is there, under another name
    assert torch.equal(load_checkpoint(target, "last")["value"], torch.ones(3))
    remove_stale_temporaries(target.parent)
    assert not list(target.parent.glob(".last.pt.tmp-*"))


def _train_command(out, name, *extra):
    return [sys.executable, "-m", "kdforge", "train", f"--set=output_dir={out}", f"--set=name={name}",
            "--set=student.model=resnet8", "--set=seed=2", "--set=schedule.epochs=2", "--set=data.batch_size=16",
            "--set=train.precision=fp32", "--set=train.device=cpu", "--set=train.tensorboard=false",
            "--set=train.progress=false", "--set=train.log_every=1", *extra]


def test_sigkill_mid_epoch_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    """A real `kdforge train` killed with SIGKILL mid-epoch, then `--resume`: same weights as a run never killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_command(tmp_path, "whole"), cwd=ROOT, env=env, check=True, capture_output=True)
    logged = sigkill_after(_train_command(tmp_path, "killed", "--set=train.checkpoint_every_steps=4"),
                           tmp_path / "killed" / "log.jsonl", 30, cwd=ROOT, env=env)
    saved = load_checkpoint(tmp_path / "killed", "last")["state"]
    steps_per_epoch = 1437 // 16
    assert 0 < saved["batch_in_epoch"] and saved["step"] < steps_per_epoch  # it died inside the first epoch
    assert saved["step"] >= (logged - 1) // 4 * 4  # at most the steps since the last checkpoint are lost
    done = subprocess.run(_train_command(tmp_path, "killed", "--set=train.checkpoint_every_steps=4", "--resume"),
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole = load_checkpoint(tmp_path / "whole", "last")
    again = load_checkpoint(tmp_path / "killed", "last")
    assert again["state"]["step"] == whole["state"]["step"]
    for key, value in whole["student"].items():
        assert torch.equal(value, again["student"][key]), key
