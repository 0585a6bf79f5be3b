"""train.teacher_cache: teacher outputs computed once per training image, looked up afterwards.

Tolerances. Runs compare in fp32 on the CPU. A cached step differs from an uncached one only
in how the teacher's images were batched (the cache runs them in index order, batches of
`eval_batch_size`; training batches are shuffled, of `batch_size`): in eval mode every image's
outputs are mathematically independent of its batch, and a kernel picked for another batch
size can only reorder fp32 sums, a few ulp (eps = 1.2e-7) per layer. Over the teacher's 14
layers that is <~1e-6 relative on the losses, and after the few SGD steps (lr 0.05) of these
runs <~1e-6 on the weights; the tolerances below (1e-5) leave a 10x margin, while a stale or
mismatched cache (another image's outputs, another tap) moves the losses by 1e-2 or more.
On this project's CPU the two runs are in fact bit-identical.
"""

import json

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer
from kdforge.engine.run import build_zoo_model
from kdforge.engine.teacher_cache import TeacherCache
from kdforge.errors import ConfigError
from kdforge.features import Tap, resolve_module
from kdforge.methods import Losses

NO_AUGMENT = {"crop_padding": 0, "hflip": False}
KD = {"ce": 0.5, "kd": {"weight": 0.5, "T": 4.0}}
AT = {"ce": 1.0, "at": 1000.0}


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(96, 64)


@pytest.fixture(scope="module")
def teacher_state(digits, briefly_trained):
    """A resnet14 trained for a few CE steps, so its outputs differ clearly from image to image."""
    return briefly_trained("resnet14", digits[0], 123, 24)


def make_trainer(tmp_path, name, digits, teacher_state, *, cache=True, losses=KD, augment=NO_AUGMENT, epochs=3,
                 **train):
    cfg = config_from_dict({
        "name": name, "seed": 3, "output_dir": str(tmp_path),
        "data": {"batch_size": 32, "eval_batch_size": 64, "augment": augment},
        "optim": {"lr": 0.05}, "schedule": {"name": "multistep", "epochs": epochs, "milestones": [2]},
        "train": {"progress": False, "tensorboard": False, "log_every": 1, "precision": "fp32", "device": "cpu",
                  "teacher_cache": cache, **train},
        "losses": losses,
    })
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet14"}}).student, 10, 1, "teacher")
    teacher.load_state_dict(teacher_state)  # the same trained teacher in every trainer
    composer = Losses.from_config(cfg.losses)
    return Trainer(student, composer, *digits, teacher=teacher if composer.needs_teacher else None, config=cfg,
                   run_dir=tmp_path / name)


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def step_losses(trainer: Trainer) -> list[dict]:
    rows = [json.loads(line) for line in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("img_per_s", "kind")} for r in rows if r["kind"] == "step"]


def assert_same_weights(a: Trainer, b: Trainer, atol: float = 1e-5) -> None:
    for (name, x), y in zip(a.student.state_dict().items(), b.student.state_dict().values()):
        if x.is_floating_point():
            torch.testing.assert_close(x, y, rtol=0, atol=atol, msg=name)
        else:
            assert torch.equal(x, y), name


@pytest.mark.parametrize("losses", [KD, AT], ids=["kd", "at"])
def test_cached_run_matches_uncached_and_never_runs_the_teacher(tmp_path, digits, teacher_state, losses):
    plain = make_trainer(tmp_path, "plain", digits, teacher_state, cache=False, losses=losses)
    plain_calls = count_forwards(plain.teacher)
    assert plain.fit()["teacher_cache"] is False
    assert plain_calls[0] >= 9  # the counter sees the uncached teacher: 3 epochs x 3 steps (+ the dry run)

    cached = make_trainer(tmp_path, "cached", digits, teacher_state, losses=losses)
    cached.prepare()
    assert isinstance(cached.teacher_cache, TeacherCache) and len(cached.teacher_cache) == 96
    calls = count_forwards(cached.teacher)  # hooked after the cache is built
    summary = cached.fit()
    assert calls[0] == 0
    assert summary["teacher_cache"] is True

    a, b = step_losses(plain), step_losses(cached)
    assert len(a) == len(b) == 9
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-5, abs=1e-7), (row_a["step"], key)
    assert_same_weights(plain, cached)


def test_extra_views_run_the_teacher_on_them_alone_and_match_the_uncached_run(tmp_path, digits, teacher_state):
    """SSKD's rotated copies are not in the cache: the teacher runs on them only (3 x the batch), the batch's own
    outputs come from the cache, and the run equals the uncached one."""
    losses = {"ce": 0.1, "kd": {"weight": 0.9, "T": 4.0}, "sskd": {"pretrain_epochs": 0}}
    plain = make_trainer(tmp_path, "plain", digits, teacher_state, cache=False, losses=losses, epochs=2)
    plain.fit()
    cached = make_trainer(tmp_path, "cached", digits, teacher_state, losses=losses, epochs=2)
    cached.prepare()
    sizes = []
    cached.teacher.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    cached.fit()
    assert sizes == [3 * 32] * 6  # 2 epochs x 3 steps, each on the rotated copies alone
    a, b = step_losses(plain), step_losses(cached)
    assert len(a) == len(b) == 6
    for row_a, row_b in zip(a, b):
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-5, abs=1e-7), (row_a["step"], key)
    assert_same_weights(plain, cached)


def _independent_teacher_outputs(trainer: Trainer, indices: torch.Tensor):
    """Logits and tapped tensors of the teacher in eval mode on (x / 255 - mean) / std, with its own hooks."""
    data = trainer.train_data
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    images = (data.images[indices].float() / 255 - mean) / std
    teacher = trainer.teacher.eval()
    captured, handles = {}, []
    for key in trainer.teacher_cache.taps:
        tap = Tap.parse(key)
        module = resolve_module(teacher, tap.module)
        if tap.what == "input":
            handles.append(module.register_forward_pre_hook(lambda m, a, key=key: captured.__setitem__(key, a[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, key=key: captured.__setitem__(key, o)))
    try:
        with torch.no_grad():
            logits = teacher(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, captured


def test_lookup_returns_the_teachers_outputs(tmp_path, digits, teacher_state):
    trainer = make_trainer(tmp_path, "lookup", digits, teacher_state,
                           losses={"kd": 1.0, "at": 1000.0, "fitnet": 1.0})
    trainer.prepare()
    cache = trainer.teacher_cache
    assert sorted(cache.taps) == sorted({str(t) for t in trainer.teacher_taps.taps}) and cache.taps  # at + fitnet
    indices = torch.tensor([5, 0, 95, 17, 5])
    logits, feats = cache.lookup(indices)
    want_logits, want_feats = _independent_teacher_outputs(trainer, indices)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    assert feats.keys() == want_feats.keys()
    for key, value in feats.items():
        torch.testing.assert_close(value, want_feats[key], rtol=1e-5, atol=1e-6, msg=key)
    # fresh tensors: a method changing them in place leaves the cache as it was
    logits.zero_()
    torch.testing.assert_close(cache.lookup(indices)[0], want_logits, rtol=1e-5, atol=1e-6)


def test_bf16_cache_keeps_the_dtype_and_layout_the_teacher_produced(tmp_path, digits, teacher_state):
    trainer = make_trainer(tmp_path, "bf16", digits, teacher_state, losses={"kd": 1.0, "at": 1000.0},
                           precision="bf16", channels_last=True)
    trainer.prepare()
    trainer.train_loader.set_epoch(0)
    images, _, indices = next(iter(trainer.train_loader))
    with torch.no_grad(), trainer.precision.autocast():
        want_logits, want_feats = trainer.teacher_taps(images)
    logits, feats = trainer.teacher_cache.lookup(indices)
    assert logits.dtype == want_logits.dtype
    torch.testing.assert_close(logits.float(), want_logits.float(), rtol=2e-2, atol=2e-2)
    for key, want in want_feats.items():
        assert feats[key].dtype == want.dtype, key
        assert feats[key].is_contiguous(memory_format=torch.channels_last) == \
            want.is_contiguous(memory_format=torch.channels_last), key
        torch.testing.assert_close(feats[key].float(), want.float(), rtol=2e-2, atol=2e-2, msg=key)


@pytest.mark.parametrize("augment, key", [({"crop_padding": 2, "hflip": False}, "data.augment.crop_padding=2"),
                                          ({"crop_padding": 0, "hflip": True}, "data.augment.hflip=true")])
def test_random_augmentation_is_refused(tmp_path, digits, teacher_state, augment, key):
    trainer = make_trainer(tmp_path, "aug", digits, teacher_state, augment=augment)
    with pytest.raises(ConfigError, match="stale") as err:
        trainer.prepare()
    assert key in str(err.value) and "train.teacher_cache=false" in str(err.value)
    assert not (tmp_path / "aug").exists()  # refused before anything is written


def test_memory_guard(tmp_path, digits, teacher_state):
    trainer = make_trainer(tmp_path, "big", digits, teacher_state, losses=AT, teacher_cache_max_gb=1e-4)
    # 96 images x (10 logits + AT's three stage-end maps, 16x32x32 + 32x16x16 + 64x8x8 floats) x 4 bytes
    expected_gb = 96 * 4 * (10 + 16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8) / 1e9
    with pytest.raises(ConfigError, match=rf"{expected_gb:.2f} GB .*train.teacher_cache_max_gb=0.0001"):
        trainer.prepare()
    make_trainer(tmp_path, "fits", digits, teacher_state, losses=AT, teacher_cache_max_gb=expected_gb * 1.01).prepare()
    with pytest.raises(ConfigError, match="teacher_cache_max_gb: must be positive"):
        make_trainer(tmp_path, "zero", digits, teacher_state, teacher_cache_max_gb=0)


def test_ignored_when_no_loss_needs_the_teacher(tmp_path, digits, teacher_state):
    """Nothing to cache: no error (augmentation may even be on), and the summary says no cache was used."""
    trainer = make_trainer(tmp_path, "ce", digits, teacher_state, losses={"ce": 1.0},
                           augment={"crop_padding": 2, "hflip": True}, max_steps=1)
    assert trainer.fit()["teacher_cache"] is False
    assert trainer.teacher_cache is None


def test_taps_of_stages_before_training_are_cached_then_dropped(tmp_path, digits, teacher_state):
    """AB (weight 0) taps the teacher only in its stage before training: that stage reads them from the
    cache, then the cache serves exactly what training taps (logits for KD), never a tap it was not asked."""
    losses = {"kd": 1.0, "ab": {"weight": 0.0, "pretrain_epochs": 1}}
    plain = make_trainer(tmp_path, "plain", digits, teacher_state, cache=False, losses=losses, epochs=1)
    plain.fit()
    cached = make_trainer(tmp_path, "cached", digits, teacher_state, losses=losses, epochs=1)
    cached.prepare()
    ab_taps = [str(Tap.parse(t)) for t in cached.losses.methods["ab"].teacher_layers]
    assert sorted(cached.teacher_cache.taps) == sorted(ab_taps)
    calls = count_forwards(cached.teacher)
    assert cached.fit()["teacher_cache"] is True
    assert calls[0] == 0  # neither the stage nor training ran the teacher
    assert cached.teacher_cache.taps == [str(t) for t in cached.teacher_taps.taps] == []
    assert cached.teacher_cache.lookup(torch.tensor([1, 2]))[1] == {}
    with pytest.raises(KeyError, match="not computed"):
        cached.teacher_cache.keep(ab_taps)
    assert_same_weights(plain, cached)
    assert [r["loss"] for r in step_losses(cached)] == pytest.approx([r["loss"] for r in step_losses(plain)],
                                                                     rel=1e-5)


def test_resume_of_a_cached_run_is_exact(tmp_path, digits, teacher_state):
    full = make_trainer(tmp_path, "full", digits, teacher_state)
    full.fit()
    first = make_trainer(tmp_path, "split", digits, teacher_state)
    first.fit(until_epoch=1)
    torch.manual_seed(999)  # resume must not depend on the process's RNG at start
    second = make_trainer(tmp_path, "split", digits, teacher_state)
    calls = count_forwards(second.teacher)
    assert second.fit(resume=True)["teacher_cache"] is True
    assert calls[0] == 1 + 2  # the dry run, then the cache rebuilt (96 images in batches of 64); none in training
    for (name, a), b in zip(full.student.state_dict().items(), second.student.state_dict().values()):
        assert torch.equal(a, b), name  # both cached, on the same CPU kernels: bit-identical
    assert [r["train_loss"] for r in full.state.history] == [r["train_loss"] for r in second.state.history]
