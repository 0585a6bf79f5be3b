"""The loop's hooks: a hook written here counts steps and epochs, keeps its count in checkpoints, and
continues exactly after SIGTERM or a crash and `--resume`; the loop's own hooks keep their order."""

import json

import pytest
import torch.nn.functional as F

from digits_trainer import small_trainer
from kdforge.engine import load_checkpoint
from kdforge.engine.hooks import Hook, Hooks
from kdforge.engine.interrupts import RunInterrupted
from kdforge.methods.base import Method


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(256, 64)  # 8 steps an epoch at batch 32


class CE(Method):
    name = "ce_probe"
    needs_teacher = False
    needs_labels = True

    def forward(self, out):
        return F.cross_entropy(out.student_logits.float(), out.labels)


class Crash(Exception):
    pass


class Counter(Hook):
    """Counts steps and epochs, sums the step losses, and can stop the process: SIGTERM (saved) or a crash
    (nothing saved) after a given step."""

    name = "counter"

    def __init__(self, sigterm_at=None, crash_at=None):
        self.steps = self.epochs = self.trains = 0
        self.loss_sum = 0.0
        self.sigterm_at, self.crash_at = sigterm_at, crash_at

    def before_train(self, trainer):
        self.trains += 1

    def after_step(self, trainer, result):
        self.steps += 1
        self.loss_sum += float(result.detached.sum())
        assert trainer.state.step == self.steps  # the count goes with the loop's, also after a resume
        if trainer.state.step == self.crash_at:
            raise Crash(f"crash after step {self.steps}")
        if trainer.state.step == self.sigterm_at:
            trainer.signals.requested = 15  # as the SIGTERM handler does: the checkpoint hook saves and stops

    def after_epoch(self, trainer, record):
        self.epochs += 1
        record["counted_steps"] = self.steps  # a hook before the epoch record adds to it

    def state_dict(self):
        return {"steps": self.steps, "epochs": self.epochs, "loss_sum": self.loss_sum}

    def load_state_dict(self, state):
        self.steps, self.epochs, self.loss_sum = state["steps"], state["epochs"], state["loss_sum"]


def trainer(tmp_path, digits, name, hook, **train):
    return small_trainer(tmp_path, digits, name, CE(), seed=3, log_every=4, hooks=[hook], **train)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits):
    hook = Counter()
    run = trainer(tmp_path_factory.mktemp("full"), digits, "full", hook)
    run.fit()
    return run, hook


def test_a_hooks_state_survives_sigterm_and_resume_exactly(tmp_path, digits, uninterrupted):
    full, full_hook = uninterrupted
    with pytest.raises(RunInterrupted, match="stopped after step 11"):
        trainer(tmp_path, digits, "run", Counter(sigterm_at=11)).fit()
    saved = load_checkpoint(tmp_path / "run", "last")
    assert saved["hooks"]["counter"]["steps"] == 11 and saved["state"]["step"] == 11
    assert saved["hooks"]["counter"]["epochs"] == 1
    hook = Counter()
    trainer(tmp_path, digits, "run", hook).fit(resume=True)
    assert (hook.steps, hook.epochs) == (full_hook.steps, full_hook.epochs) == (16, 2)
    assert hook.loss_sum == full_hook.loss_sum  # the same losses, step for step: an exact resume
    assert hook.trains == 1  # before_train once per fit


def test_a_hooks_state_survives_a_crash_from_the_last_mid_epoch_checkpoint(tmp_path, digits, uninterrupted):
    """A crash at step 13 saves nothing: --resume starts from the step-12 checkpoint, whose hook count is 12."""
    _, full_hook = uninterrupted
    with pytest.raises(Crash):
        trainer(tmp_path, digits, "run", Counter(crash_at=13), checkpoint_every_steps=6).fit()
    assert load_checkpoint(tmp_path / "run", "last")["hooks"]["counter"]["steps"] == 12
    hook = Counter()
    trainer(tmp_path, digits, "run", hook, checkpoint_every_steps=6).fit(resume=True)
    assert (hook.steps, hook.epochs, hook.loss_sum) == (full_hook.steps, full_hook.epochs, full_hook.loss_sum)


def test_a_hook_adds_to_the_epoch_record_before_it_is_logged_and_saved(uninterrupted):
    full, _ = uninterrupted
    assert [r["counted_steps"] for r in full.state.history] == [8, 16]
    logged = [json.loads(line) for line in (full.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["counted_steps"] for r in logged if r["kind"] == "epoch"] == [8, 16]
    assert load_checkpoint(full.run_dir, "last")["state"]["history"][-1]["counted_steps"] == 16


def test_the_loops_own_hooks_come_in_order_around_the_callers():
    from kdforge.engine.trainer import default_hooks

    names = [type(h).__name__ for h in default_hooks([Counter()])]
    assert names == ["AfterPretrainHook", "BNRecalibrationHook", "TeacherStoreHook", "EvaluationHook", "StepLogHook",
                     "Counter", "EpochRecordHook", "CheckpointHook", "SummaryHook"]


def test_two_hooks_of_one_name_are_refused():
    with pytest.raises(ValueError, match="counter"):
        Hooks([Counter(), Counter()])


def test_methods_add_their_own_hooks_the_loop_calls_first():
    from kdforge.engine.hooks import EvalHeadsHook, PretrainStageHook
    from kdforge.engine.trainer import default_hooks
    from kdforge.methods import Losses

    losses = Losses.from_config({"ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 2}, "fitnet": 1.0, "kd": 0.0})
    hooks = losses.loop_hooks()  # AB's stage runs at weight 0; FitNet has none by default; kd at 0 is inactive
    assert [(type(h), h.key) for h in hooks] == [(PretrainStageHook, "ab")]
    assert hooks[0].method is losses.methods["ab"] and hooks[0].name == "pretrain/ab"
    ekd = Losses.from_config({"ekd": 1.0, "ab": {"weight": 1.0, "pretrain_epochs": 1}}).loop_hooks()
    assert [(type(h), h.key) for h in ekd] == [(EvalHeadsHook, "ekd"), (PretrainStageHook, "ab")]
    names = [type(h).__name__ for h in default_hooks([Counter()], ekd)]
    assert names[:3] == ["EvalHeadsHook", "PretrainStageHook", "AfterPretrainHook"] and names[-1] == "SummaryHook"
