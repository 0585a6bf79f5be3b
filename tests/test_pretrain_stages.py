"""The stages before training (AB's initialisation, FT's paraphraser) in the engine: stopped and continued
runs end bit for bit where an uninterrupted run ends, and each stage trains exactly what it names.

A stop is simulated as in tests/test_crash_safety.py: the process sends itself SIGTERM from inside a
forward pass. Inside a stage the trainer stops after that step and saves nothing (a stage is not
checkpointed); `--resume` then starts the run again. Inside training it saves and stops, and `--resume`
continues from last.pt without running the stage again.
"""

from __future__ import annotations

import copy
import json
import signal

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer, train_from_config
from kdforge.engine.interrupts import RunInterrupted
from kdforge.engine.checkpoint import load_checkpoint
from kdforge.features import FeatureTaps
from kdforge.recipes.runs import run_planned

STEPS = 5  # 80 few-shot images (8 per digit) in batches of 16
STAGE_EPOCHS, EPOCHS = 2, 2


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A resnet14 teacher run (a few steps: AB and FT need its maps, not its accuracy)."""
    tmp = tmp_path_factory.mktemp("teacher")
    run_planned(base_config(tmp, "teacher", {"ce": 1.0}, None, student="resnet14", max_steps=3))
    return tmp / "teacher"


def base_config(out, name, losses, teacher, student="resnet8", **train):
    return {
        "name": name, "seed": 4, "output_dir": str(out), "losses": losses,
        "student": {"model": student},
        **({"teacher": {"checkpoint": str(teacher)}} if teacher else {}),
        "data": {"name": "digits", "batch_size": 16, "eval_batch_size": 128,
                 "few_shot": {"shots": 8, "seed": 1, "labels": True},
                 "augment": {"crop_padding": 2, "hflip": True}},  # the stage and training draw random crops/flips
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "epochs": EPOCHS},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "log_every": 2,
                  **train},
    }


LOSSES = {
    # the usual AB: weight 0, it acts through its stage alone
    "ab": {"ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": STAGE_EPOCHS}},
    # FT trains with its paraphraser's factors after the stage
    "ft": {"ce": 1.0, "ft": {"weight": 200.0, "pretrain_epochs": STAGE_EPOCHS}},
}


def signal_at_forward(monkeypatch, n: int, signum: int) -> None:
    """The n-th call of Trainer.forward (1-based, the stage's included) raises `signum` in this process."""
    real = Trainer.forward
    calls = [0]

    def forward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            signal.raise_signal(signum)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "forward", forward)


def final(run_dir):
    ckpt = load_checkpoint(run_dir, "last")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return ckpt, records


def assert_same_run(a, b):
    (ca, ra), (cb, rb) = a, b
    for part in ("student", "losses"):  # the weights and BN statistics of the student, adapters, paraphraser
        assert ca[part].keys() == cb[part].keys()
        for key in ca[part]:
            assert torch.equal(ca[part][key], cb[part][key]), (part, key)
    assert ca["state"]["step"] == cb["state"]["step"] == EPOCHS * STEPS
    stage = [(r["method"], r["epoch"], r["loss"]) for r in ra if r["kind"] == "pretrain"]
    assert stage == [(r["method"], r["epoch"], r["loss"]) for r in rb if r["kind"] == "pretrain"]
    assert [e for _, e, _ in stage] == list(range(1, STAGE_EPOCHS + 1))  # the stage's epochs, each once
    keys = ("epoch", "step", "train_loss", "train_top1", "eval_top1", "eval_loss")
    epochs = [[r[k] for k in keys] for r in ra if r["kind"] == "epoch"]
    assert epochs == [[r[k] for k in keys] for r in rb if r["kind"] == "epoch"] and len(epochs) == EPOCHS
    assert [r["step"] for r in ra if r["kind"] == "step"] == [r["step"] for r in rb if r["kind"] == "step"]


@pytest.mark.parametrize("method", ["ab", "ft"])
def test_stopped_in_the_stage_or_in_training_and_continued_ends_bit_identical(method, tmp_path, teacher_run,
                                                                             monkeypatch):
    full = base_config(tmp_path, "full", LOSSES[method], teacher_run)
    run_planned(full)
    reference = final(tmp_path / "full")

    # SIGTERM during the stage's second epoch (forward 7 of its 10): stopped there, nothing saved
    in_stage = base_config(tmp_path, "in-stage", LOSSES[method], teacher_run)
    with monkeypatch.context() as m:
        signal_at_forward(m, STEPS + 2, signal.SIGTERM)
        with pytest.raises(RunInterrupted, match=f"SIGTERM received in {method}'s pre-training stage "
                                                 f"\\(epoch 2 of {STAGE_EPOCHS}\\); a stage is not checkpointed"):
            run_planned(in_stage)
    log = [json.loads(line) for line in (tmp_path / "in-stage" / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["epoch"]) for r in log] == [("pretrain", 1)]  # stopped inside the stage's 2nd epoch
    assert not (tmp_path / "in-stage" / "checkpoints" / "last.pt").exists()
    # `kdforge train --resume` on it starts the run again (it once failed: "last.pt does not exist")
    train_from_config(config_from_dict(in_stage), resume=True)
    assert_same_run(final(tmp_path / "in-stage"), reference)

    # SIGTERM at training step 7 (inside the second epoch): saved there, resumed after the stage
    in_training = base_config(tmp_path, "in-training", LOSSES[method], teacher_run)
    with monkeypatch.context() as m:
        signal_at_forward(m, STAGE_EPOCHS * STEPS + 7, signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt, match="SIGTERM received: stopped after step 7"):
            run_planned(in_training)
    saved = load_checkpoint(tmp_path / "in-training", "last")["state"]
    assert (saved["step"], saved["epoch"], saved["batch_in_epoch"]) == (7, 1, 2)
    run_planned(in_training)  # resumes: the stage must not run again
    assert_same_run(final(tmp_path / "in-training"), reference)


# ----------------------------------------------------------------------------- what each stage trains

@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(96, 32)


def make_trainer(tmp_path, digits, losses, student="resnet8", stage_epochs=4):
    from kdforge.config import config_from_dict
    from kdforge.engine.run import build_zoo_model
    from kdforge.methods import Losses

    cfg = config_from_dict({
        "name": "run", "seed": 3, "output_dir": str(tmp_path), "losses": losses,
        "data": {"batch_size": 16, "eval_batch_size": 64, "augment": {"crop_padding": 0, "hflip": False}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
        "schedule": {"name": "constant", "epochs": 1},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "max_steps": 1},
    })
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(config_from_dict({"student": {"model": student}}).student, 10, 1, "student")
    teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet14"}}).student, 10, 1, "teacher")
    return Trainer(student, Losses.from_config(cfg.losses), digits[0], digits[1], teacher=teacher,
                   config=cfg, run_dir=tmp_path / "run")


def around_the_stage(trainer, monkeypatch):
    """fit(); returns deep copies of (student, teacher, methods) just before and just after the stages."""
    from kdforge.engine.hooks import PretrainStageHook

    snaps = {}
    run_stage = PretrainStageHook.run_stage

    def recorded(hook, tr):
        snaps["before"] = copy.deepcopy((tr.student, tr.teacher, tr.losses))
        run_stage(hook, tr)
        snaps["after"] = copy.deepcopy((tr.student, tr.teacher, tr.losses))

    monkeypatch.setattr(PretrainStageHook, "run_stage", recorded)
    trainer.fit()
    return snaps["before"], snaps["after"]


def fixed_batch(digits, n=48):
    """The first n training images, normalised as the loader does, without augmentation."""
    from kdforge.data import TensorLoader

    loader = TensorLoader(digits[0].subset(torch.arange(n)), n, shuffle=False, drop_last=False,
                          device=torch.device("cpu"), augment=None, seed=0, channels_last=False)
    return next(iter(loader))[0]


def tapped(model, tap, images):
    with torch.no_grad(), FeatureTaps(model.eval(), [tap]) as taps:
        return taps(images)[1][tap]


def ab_loss_by_hand(student, teacher, connector, images, s_tap, t_tap, margin=1.0):
    """AB's loss written out: sum of relu(m - r(s))^2 where the teacher fires, relu(m + r(s))^2 elsewhere, / N."""
    t = tapped(teacher, t_tap, images)
    s = tapped(student, s_tap, images)
    with torch.no_grad():
        r = connector.eval()(s)
    fires = t > 0
    per = torch.where(fires, (margin - r).clamp(min=0) ** 2, (margin + r).clamp(min=0) ** 2)
    return per.sum().item() / images.shape[0]


def test_ab_stage_lowers_its_loss_by_a_margin_and_trains_exactly_the_layers_up_to_the_hint(tmp_path, digits,
                                                                                          monkeypatch):
    # resnet20 (3 blocks a stage) hinted at the end of layer2's second block: layer2.2 and later stay
    s_tap = t_tap = "layer2.1.out_relu:input"
    trainer = make_trainer(tmp_path, digits, {"ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 4,
                                                                 "teacher_layers": [t_tap],
                                                                 "student_layers": [s_tap]}}, student="resnet20")
    (s0, t0, m0), (s1, t1, m1) = around_the_stage(trainer, monkeypatch)
    ab0, ab1 = m0.methods["ab"], m1.methods["ab"]

    # the student parameters the stage trains: written out from resnet20's structure
    up_to_hint = {n for n, _ in s0.named_parameters()
                  if n.split(".")[0] in ("conv1", "bn1", "layer1") or n.startswith(("layer2.0.", "layer2.1."))}
    assert set(ab0._pretrain_names) == up_to_hint
    assert {id(p) for p in ab1.pretrain_parameters(s1)} == {id(p) for n, p in s1.named_parameters()
                                                              if n in up_to_hint} | {id(p) for p in ab1.parameters()}
    # each of them moved; everything else of the student is unchanged bit for bit, buffers included:
    # BN statistics move only in the modules the stage trains
    before, after = s0.state_dict(), s1.state_dict()
    trained_modules = {n.rsplit(".", 1)[0] for n in up_to_hint}
    may_change = up_to_hint | {k for k in before if k.rsplit(".", 1)[0] in trained_modules}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == may_change and len(up_to_hint) < len(dict(s0.named_parameters()))
    assert not any(k.startswith(("layer2.2.", "layer3.", "fc.")) for k in changed)
    assert all(torch.equal(a, b) for a, b in zip(t0.state_dict().values(), t1.state_dict().values()))
    conn0, conn1 = ab0.connectors.state_dict(), ab1.connectors.state_dict()
    assert all(not torch.equal(conn0[k], conn1[k]) for k in conn0 if not k.endswith("num_batches_tracked"))

    # AB's loss on a fixed batch, written out, with the models before and after the stage: far lower
    images = fixed_batch(digits)
    start = ab_loss_by_hand(s0, t0, ab0.connectors[0], images, s_tap, t_tap)
    end = ab_loss_by_hand(s1, t1, ab1.connectors[0], images, s_tap, t_tap)
    assert end < 0.5 * start, (start, end)
    records = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    stage = [r["loss"] for r in records if r["kind"] == "pretrain"]
    assert len(stage) == 4 and stage[-1] < 0.6 * stage[0], stage


def test_ft_stage_lowers_the_reconstruction_error_by_a_margin_and_leaves_the_student_alone(tmp_path, digits,
                                                                                          monkeypatch):
    trainer = make_trainer(tmp_path, digits, {"ce": 1.0, "ft": {"weight": 200.0, "pretrain_epochs": 4}})
    (s0, t0, m0), (s1, t1, m1) = around_the_stage(trainer, monkeypatch)
    ft0, ft1 = m0.methods["ft"], m1.methods["ft"]
    assert ft0.teacher_layers == ["layer3"]  # resnet14's last stage end

    # the student (weights and BN statistics), the translator and the teacher: unchanged bit for bit
    for a, b in ((s0, s1), (t0, t1), (ft0.translators, ft1.translators)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # every weight of the paraphraser moved
    p0, p1 = ft0.paraphrasers.state_dict(), ft1.paraphrasers.state_dict()
    assert all(not torch.equal(p0[k], p1[k]) for k in p0 if k.endswith((".weight", ".bias")))

    # the paraphraser's reconstruction error of the teacher's map on a fixed batch, written out
    images = fixed_batch(digits)
    maps = tapped(t0, "layer3", images)

    def error(paraphraser):
        with torch.no_grad():
            return ((paraphraser.eval()(maps) - maps) ** 2).mean().item()

    start, end = error(ft0.paraphrasers[0]), error(ft1.paraphrasers[0])
    assert end < 0.5 * start, (start, end)
    records = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    stage = [r["loss"] for r in records if r["kind"] == "pretrain"]
    assert len(stage) == 4 and stage[-1] < 0.6 * stage[0], stage
