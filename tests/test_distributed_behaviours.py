"""Data-parallel behaviours beyond the plain training step (issue 19), with 2 gloo processes on the CPU:
per-rank evaluation, a method's pre-training stage (AB), the teacher cache, and EKD on a ddnn student.

One spawn of 2 processes (fixture `two_ranks`) runs the four scenarios, one folder each; every test compares
its scenario with a computation made here, in one process. Where the students have BatchNorm the
reference is the one DDP stands for: per global batch, each rank's share (positions rank::2 of the
batch) through the model on its own (its own batch statistics), the gradients of the shares averaged,
and the BN running statistics those of rank 0's shares (rank 0's buffers are the ones DDP broadcasts
and checkpoints keep).
"""

import json
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdforge.config import config_from_dict
from kdforge.data import TensorLoader, load_dataset
from kdforge.engine import Trainer, load_checkpoint
from kdforge.engine.checkpoint import load_model
from kdforge.engine.evaluate import evaluate
from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint
from kdforge.engine.logger import RunLogger, read_log
from kdforge.engine.optim import build_optimizer
from kdforge.engine.precision import resolve_precision
from kdforge.engine.pretrain import PRETRAIN_EPOCH_OFFSET, train_only_what_is_trained
from kdforge.engine.run import build_zoo_model
from kdforge.methods import Losses
from digits_trainer import run_pretrain_stages  # tests/ is on the path
from test_distributed import NoBatchNorm  # tests/ is on the path: one copy of the BN-free student

CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", None, CPU)
EXACT = "donot_use_mm_for_euclid_dist"  # cdist by differences, not by |x|^2 + |y|^2 - 2xy (rounding ~1e-2)


# ---------------------------------------------------------------------------------------------- set-up
def _data():
    """(first n training images, the 101-image hold-out of training images 1000..1100, the 360 test images)."""
    train = load_dataset("digits", None, "train")
    return (lambda n: train.subset(torch.arange(n))), train.subset(torch.arange(1000, 1101)), \
        load_dataset("digits", None, "test")


def _zoo(name, seed, **options):
    torch.manual_seed(seed)
    return build_zoo_model(config_from_dict({"student": {"model": name, "options": options}}).student, 10, 1, "x")


def _config(out, name, losses, epochs=1, **train):
    return config_from_dict({
        "name": name, "seed": 3, "output_dir": str(out), "optim": {"lr": 0.05}, "losses": losses,
        "data": {"batch_size": 64, "eval_batch_size": 50, "augment": {"crop_padding": 0, "hflip": False}},
        "schedule": {"name": "constant", "epochs": epochs},
        "train": {"log_every": 1, "precision": "fp32", "device": "cpu", "progress": False, "tensorboard": False,
                  **train}})


def _eval_trainer(out, distributed=None):
    """resnet8 (BatchNorm) trained with CE for one epoch of 2 steps; evaluated on test and a 101-image hold-out."""
    first, val, test = _data()
    losses = {"ce": 1.0}
    return Trainer(_zoo("resnet8", 0), Losses.from_config(losses), first(128), test, val_data=val,
                   config=_config(out, "eval", losses), run_dir=out / "eval", distributed=distributed)


AB_LOSSES = {"ce": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 2}}


def _ab_trainer(out, distributed=None):
    """AB's initialisation stage (2 epochs of 2 steps) on a resnet8 student and connectors, both with BN."""
    first, _, _ = _data()
    student, teacher = _zoo("resnet8", 0), _zoo("resnet8", 1)
    torch.manual_seed(2)  # the connectors' initialisation, at prepare()
    trainer = Trainer(student, Losses.from_config(AB_LOSSES), first(128), teacher=teacher,
                      config=_config(out, "ab", AB_LOSSES), run_dir=out / "ab", distributed=distributed)
    trainer.prepare()
    return trainer


CACHE_LOSSES = {"ce": 0.5, "kd": 0.5, "fitnet": {"weight": 1.0, "student_layers": ["conv2"],
                                                   "teacher_layers": ["layer2"], "bn": False}}


def _cache_trainer(out, cache, distributed=None):
    """KD + FitNet (teacher logits and a tapped teacher map) for 2 epochs of 2 steps, a student without BN."""
    first, _, test = _data()
    torch.manual_seed(0)
    student = NoBatchNorm()
    teacher = _zoo("resnet8", 1)
    torch.manual_seed(2)  # FitNet's regressor, at prepare()
    return Trainer(student, Losses.from_config(CACHE_LOSSES), first(128), test.subset(torch.arange(100)),
                   teacher=teacher, config=_config(out, "cache", CACHE_LOSSES, epochs=2, teacher_cache=cache),
                   run_dir=out / "cache", distributed=distributed)


EKD_OPTIONS = {"full": "resnet14", "subnets": ["resnet8"]}


def _ekd_trainer(out, distributed=None):
    """EKD on a ddnn (resnet14 holding resnet8, switchable BN): one epoch of 3 steps, evaluated on the test set."""
    first, _, test = _data()
    losses = {"ekd": 1.0}
    student = _zoo("ddnn", 0, **EKD_OPTIONS)
    torch.manual_seed(2)
    return Trainer(student, Losses.from_config(losses), first(192), test, config=_config(out, "ekd", losses),
                   run_dir=out / "ekd", distributed=distributed)


# ---------------------------------------------------------------------------------------------- the 2 ranks
def _eval_scenario(out, rank):
    trainer = _eval_trainer(out)
    seen = []  # what this rank's student evaluated (evaluate() runs under inference mode, training does not)
    trainer.student.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].clone()) if torch.is_inference_mode_enabled() else None)
    trainer.fit()
    torch.save(torch.cat(seen), out / f"evaluated_by_rank{rank}.pt")


def _ab_scenario(out, rank):
    trainer = _ab_trainer(out)
    run_dir = out / "ab"
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = RunLogger(run_dir, tensorboard=False, enabled=rank == 0)
    trainer.logger = logger
    run_pretrain_stages(trainer)
    logger.close()
    torch.save({"student": trainer.student.state_dict(), "losses": trainer.losses.state_dict()},
               run_dir / f"rank{rank}.pt")


def _cache_scenario(out, rank):
    trainer = _cache_trainer(out, cache=True)
    trainer.prepare()  # builds the cache
    calls = []
    trainer.teacher.register_forward_hook(lambda *_: calls.append(1))
    trainer.fit()
    (out / f"rank{rank}.json").write_text(json.dumps({
        "teacher_forwards_in_fit": len(calls),
        "cached_images": None if trainer.teacher_cache is None else len(trainer.teacher_cache)}))


def _ekd_scenario(out, rank):
    _ekd_trainer(out).fit()


SCENARIOS = {"eval": _eval_scenario, "ab": _ab_scenario, "cache": _cache_scenario, "ekd": _ekd_scenario}


def _ranks(rank, out, rendezvous):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=300))
    torch.set_num_threads(1)
    try:
        for name, scenario in SCENARIOS.items():
            folder = Path(out) / name
            folder.mkdir(parents=True, exist_ok=True)
            scenario(folder, rank)
    finally:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def one_thread_like_the_ranks():
    """The one-process references run on one thread, as each rank does: oneDNN may pick other conv
    kernels for another thread count (differences of ~1e-4 that a few steps amplify past the tolerances)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_ranks")
    mp.spawn(_ranks, args=(str(out), str(out / "rendezvous")), nprocs=2)
    return out


# ---------------------------------------------------------------------------------------------- the reference
def _ghost_step(trainer, images, labels, indices, loss_of):
    """Backward of what 2 ranks compute for one global batch: each share on its own, gradients averaged;
    BN buffers end as rank 0's share left them. Returns each share's loss values {name: [rank0, rank1]}."""
    buffers = [*trainer.student.buffers(), *trainer.losses.buffers()]
    values, kept = {}, None
    for r in (0, 1):
        with trainer.precision.autocast():
            losses = loss_of(trainer.forward(images[r::2], labels[r::2], indices[r::2]))
        losses = losses if isinstance(losses, dict) else {"loss": losses}
        (sum(losses.values()) / 2).backward()
        for name, value in losses.items():
            values.setdefault(name, []).append(value.item())
        if r == 0:
            kept = [b.clone() for b in buffers]
    with torch.no_grad():
        for b, k in zip(buffers, kept):
            b.copy_(k)
    return values


def _assert_states_close(got, want, what):
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}.{key}: {m}")


def _normalized(data):
    return next(iter(TensorLoader(data, len(data), shuffle=False, drop_last=False, device=CPU, augment=None,
                                  seed=0)))[0].flatten(1)


# ---------------------------------------------------------------------------------------------- the tests
def test_each_rank_evaluates_its_share_and_the_sums_give_the_one_process_metrics(two_ranks):
    """Rank 0's checkpoint evaluated in one process (`kdforge eval`'s function on the test split, `evaluate` on
    the hold-out) gives the logged top-1/top-5/loss of both sets; each image was evaluated by exactly one rank
    (test 180 + 180, hold-out 51 + 50), so no rank evaluated the whole split."""
    _, val, test = _data()
    run_dir = two_ranks / "eval" / "eval"
    ckpt = load_checkpoint(run_dir, "last")
    record = ckpt["state"]["history"][-1]
    assert ckpt["state"]["step"] == 2 and record["epoch"] == 1
    whole_test = evaluate_checkpoint(run_dir, "last", device="cpu", precision="fp32", batch_size=64)
    model, _ = load_model(run_dir, "last")
    whole_val = evaluate(model, TensorLoader(val, 64, shuffle=False, drop_last=False, device=CPU, augment=None,
                                             seed=0), FP32)
    for prefix, whole, n in (("eval", whole_test, 360), ("val", whole_val, 101)):
        assert whole["n"] == n
        assert record[f"{prefix}_top1"] == pytest.approx(whole["top1"], abs=1e-9), prefix
        assert record[f"{prefix}_top5"] == pytest.approx(whole["top5"], abs=1e-9), prefix
        assert record[f"{prefix}_loss"] == pytest.approx(whole["loss"], rel=1e-5), prefix
    assert 0 < whole_test["top1"] < 100 and whole_test["top5"] > whole_test["top1"]  # not all right or wrong

    reference = torch.cat([_normalized(test), _normalized(val)])  # images 0..359 test, 360..460 hold-out
    gaps = torch.cdist(reference, reference, compute_mode=EXACT) + 1e9 * torch.eye(len(reference))
    assert gaps.min() > 1.0  # distinct images: each evaluated input names one of them
    evaluated = []
    for rank in (0, 1):
        inputs = torch.load(two_ranks / "eval" / f"evaluated_by_rank{rank}.pt").flatten(1)
        distance, index = torch.cdist(inputs, reference, compute_mode=EXACT).min(dim=1)
        assert distance.max() < 1e-3
        evaluated.append(index.tolist())
        assert sum(i < 360 for i in index.tolist()) == 180, rank  # half of the test split
        assert sum(i >= 360 for i in index.tolist()) in (50, 51), rank  # about half of the hold-out
    assert sorted(evaluated[0] + evaluated[1]) == list(range(461))  # every image once, by one rank


def test_two_ranks_average_the_gradients_of_abs_pretraining_stage(two_ranks, tmp_path):
    """AB's initialisation (student layers up to the deepest hint + BN connectors, 4 steps of 64) under 2
    ranks: both ranks hold the same parameters after the stage, equal to one process averaging the gradients
    of the two shares of every global batch; the logged stage losses are the mean over ranks."""
    ranks = [torch.load(two_ranks / "ab" / "ab" / f"rank{r}.pt") for r in (0, 1)]
    trainer = _ab_trainer(tmp_path)
    initial = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    method = trainer.losses.methods["ab"]
    params = [p for p in method.pretrain_parameters(trainer.student) if p.requires_grad]
    optimizer = build_optimizer(params, trainer.cfg.optim)
    train_only_what_is_trained(trainer.student, params)
    losses = []
    for epoch in range(2):
        trainer.train_loader.set_epoch(PRETRAIN_EPOCH_OFFSET + epoch)
        step_losses = []
        for images, labels, indices in trainer.train_loader:
            optimizer.zero_grad(set_to_none=True)
            step_losses.append(sum(_ghost_step(trainer, images, labels, indices, method.pretrain_loss)["loss"]) / 2)
            optimizer.step()
        assert len(step_losses) == 2
        losses.append(sum(step_losses) / len(step_losses))

    _assert_states_close(ranks[0]["student"], trainer.student.state_dict(), "student")
    _assert_states_close(ranks[0]["losses"], trainer.losses.state_dict(), "losses")
    for part, module in (("student", trainer.student), ("losses", trainer.losses)):
        for key, _ in module.named_parameters():  # the averaged gradients took both ranks the same way
            assert torch.equal(ranks[1][part][key], ranks[0][part][key]), f"{part}.{key} differs between ranks"
    trained = [n for n, p in trainer.student.named_parameters() if any(p is q for q in params)]
    assert "conv1.weight" in trained and "fc.weight" not in trained
    assert (ranks[0]["student"]["conv1.weight"] - initial["conv1.weight"]).abs().max() > 1e-3  # the stage trained
    logged = [r for r in read_log(two_ranks / "ab" / "ab") if r["kind"] == "pretrain"]
    assert [(r["method"], r["epoch"]) for r in logged] == [("ab", 1), ("ab", 2)]
    assert [r["loss"] for r in logged] == pytest.approx(losses, rel=1e-5)


def test_teacher_cache_under_two_ranks_trains_as_one_process_without_it(two_ranks, tmp_path):
    """KD + FitNet with train.teacher_cache under 2 ranks: every rank caches all 128 training images and runs
    the teacher no more once training starts; 4 steps give the weights, losses and top-1 of one process that
    runs the teacher on every batch (student without BN, so the split of a batch does not matter)."""
    for rank in (0, 1):
        seen = json.loads((two_ranks / "cache" / f"rank{rank}.json").read_text())
        assert seen == {"teacher_forwards_in_fit": 0, "cached_images": 128}, rank
    two = load_checkpoint(two_ranks / "cache" / "cache", "last")
    assert json.loads((two_ranks / "cache" / "cache" / "summary.json").read_text())["teacher_cache"] is True
    reference = _cache_trainer(tmp_path, cache=False)
    initial = {k: v.clone() for k, v in reference.student.state_dict().items()}
    reference.fit()
    one = load_checkpoint(tmp_path / "cache", "last")
    assert one["state"]["step"] == two["state"]["step"] == 4
    _assert_states_close(two["student"], one["student"], "student")
    _assert_states_close(two["losses"], one["losses"], "losses")
    assert min((one["student"][k] - v).abs().max() for k, v in initial.items()) > 1e-4  # every tensor trained
    for a, b in zip(one["state"]["history"], two["state"]["history"], strict=True):
        assert b["train_kd"] == pytest.approx(a["train_kd"], rel=1e-5)
        assert b["train_fitnet"] == pytest.approx(a["train_fitnet"], rel=1e-5)
        assert b["eval_top1"] == pytest.approx(a["eval_top1"], abs=1e-9)


def test_ekd_on_a_ddnn_under_two_ranks_takes_the_averaged_steps_and_reports_every_path(two_ranks, tmp_path):
    """EKD (full net teaching its resnet8 sub-net online) for 3 steps of 64 under 2 ranks: rank 0's weights and
    BN statistics and the logged terms equal one process averaging the two shares' gradients; the logged
    top-1 of the full net and of the sub-net are those of the checkpoint's paths over all 360 test images."""
    run_dir = two_ranks / "ekd" / "ekd"
    two = load_checkpoint(run_dir, "last")
    trainer = _ekd_trainer(tmp_path)
    trainer.prepare()
    initial = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    trainer.student.train()
    trainer.train_loader.set_epoch(0)
    logged_steps = []
    for images, labels, indices in trainer.train_loader:
        trainer.optimizer.zero_grad(set_to_none=True)
        values = _ghost_step(trainer, images, labels, indices, trainer.losses)
        trainer.optimizer.step()
        trainer.scheduler.step()
        logged_steps.append({name: sum(v) / 2 for name, v in values.items()})
    assert two["state"]["step"] == len(logged_steps) == 3
    _assert_states_close(two["student"], trainer.student.state_dict(), "student")
    moved = [k for k, v in initial.items() if v.is_floating_point() and (two["student"][k] - v).abs().max() > 1e-4]
    assert any(".layer3.1." in k for k in moved) and any(".layer3.0." in k for k in moved)  # full-only and shared
    records = [r for r in read_log(run_dir) if r["kind"] == "step"]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert sorted(logged_steps[0]) == ["ekd/full_ce", "ekd/resnet8/at", "ekd/resnet8/ce", "ekd/resnet8/kl"]
    for record, want in zip(records, logged_steps):
        assert {k: record[k] for k in want} == pytest.approx(want, rel=1e-5)

    _, _, test = _data()
    model = _zoo("ddnn", 0, **EKD_OPTIONS).eval()
    model.load_state_dict(two["student"])
    x, y = next(iter(TensorLoader(test, len(test), shuffle=False, drop_last=False, device=CPU, augment=None,
                                  seed=0)))
    with torch.no_grad():
        predicted = {path: model(x, subnet=path).argmax(1) for path in ("resnet14", "resnet8")}
    assert (predicted["resnet14"] != predicted["resnet8"]).any()  # two paths, not one reported twice
    top1 = {path: 100.0 * (p == y).sum().item() / len(test) for path, p in predicted.items()}
    record = two["state"]["history"][-1]
    assert record["eval_top1"] == pytest.approx(top1["resnet14"], abs=1e-9)
    assert record["eval_top1/ekd/resnet8"] == pytest.approx(top1["resnet8"], abs=1e-9)
