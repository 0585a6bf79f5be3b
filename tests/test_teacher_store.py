"""train.teacher_store: a study's teacher logits, computed once per (seed, epoch, image) and looked up by later runs.

Equality. With `teacher_store_dtype: float32` and the same batches (same seed and batch size), a run that looks
the logits up does the same arithmetic as a run without a store, except that the teacher's forward is skipped:
the stored values are the teacher's outputs on the very same batches. So weights must be exactly equal. With
float16 the logits are rounded once, identically in the recording and the looking-up run, so those two runs must
be exactly equal to each other (and differ from a storeless run by fp16 rounding only).
"""

import json
from pathlib import Path

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.engine import Trainer
from kdforge.engine.run import build_zoo_model
from kdforge.methods import Losses

AUGMENT = {"crop_padding": 1, "hflip": True}  # random augmentation: the study store works under it
KD = {"ce": 0.5, "kd": {"weight": 0.5, "T": 4.0}}


@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(100, 64)  # 100 images, batches of 32: drop_last leaves 4 images out of every epoch


@pytest.fixture(scope="module")
def teacher_state(digits, briefly_trained):
    """A resnet14 trained a few CE steps, so its logits differ clearly from image to image."""
    return briefly_trained("resnet14", digits[0], 7, 20)


def trainer(tmp_path, name, digits, teacher_state, *, store=None, dtype="float32", losses=KD, seed=3, epochs=2,
            teacher=None, **train):
    cfg = config_from_dict({
        "name": name, "seed": seed, "output_dir": str(tmp_path),
        "data": {"batch_size": 32, "eval_batch_size": 64, "augment": AUGMENT},
        "optim": {"lr": 0.05}, "schedule": {"name": "constant", "epochs": epochs},
        "train": {"progress": False, "tensorboard": False, "log_every": 1, "precision": "fp32", "device": "cpu",
                  "teacher_store": None if store is None else str(store), "teacher_store_dtype": dtype, **train},
        "losses": losses,
    })
    torch.manual_seed(seed)
    student = build_zoo_model(config_from_dict({"student": {"model": "resnet8"}}).student, 10, 1, "student")
    if teacher is None:
        teacher = build_zoo_model(config_from_dict({"student": {"model": "resnet14"}}).student, 10, 1, "teacher")
        teacher.load_state_dict(teacher_state)
    composer = Losses.from_config(cfg.losses)
    return Trainer(student, composer, *digits, teacher=teacher, config=cfg, run_dir=tmp_path / name)


def count_forwards(model: torch.nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def equal_weights(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.student.state_dict(), b.student.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_looked_up_run_equals_a_run_without_store_exactly(tmp_path, digits, teacher_state):
    plain = trainer(tmp_path, "plain", digits, teacher_state)
    plain.fit()
    first = trainer(tmp_path, "first", digits, teacher_state, store=tmp_path / "store")
    first.fit()
    second = trainer(tmp_path, "second", digits, teacher_state, store=tmp_path / "store")
    calls = count_forwards(second.teacher)
    second.fit()
    assert equal_weights(plain, first) and equal_weights(plain, second)
    assert calls[0] == 1  # only the dry run before training: every step looked its teacher logits up
    steps_images = 2 * 3 * 32  # 2 epochs of 3 whole batches
    assert first.summary["teacher_store"]["computed_images"] == steps_images
    assert first.summary["teacher_store"]["served_images"] == 0
    assert second.summary["teacher_store"]["served_images"] == steps_images
    assert second.summary["teacher_store"]["computed_images"] == 0
    logs = [json.loads(line) for line in (tmp_path / "second" / "log.jsonl").read_text().splitlines()]
    assert [r["teacher_store"] for r in logs if r.get("kind") == "epoch"] == ["served", "served"]


def test_stored_logits_are_the_teachers_on_the_augmented_images_by_index(tmp_path, digits, teacher_state):
    """Independent check of what a file holds: rebuild epoch 1's augmented batches with the loader and run the
    teacher on them directly; every visited image's stored logits equal them, the dropped ones are unseen."""
    run = trainer(tmp_path, "rec", digits, teacher_state, store=tmp_path / "store")
    run.fit()
    folder = run.teacher_store.folder
    stored = torch.load(folder / "epoch-1.pt", weights_only=True)
    loader = run.train_loader
    loader.set_epoch(1)
    expected = torch.zeros(100, 10)
    teacher = run.teacher.eval()
    with torch.no_grad():
        for images, _, idx in loader:
            expected[idx] = teacher(images)
    order = loader.epoch_indices(1)
    visited, dropped = order[:96], order[96:]
    assert stored["seen"][visited].all() and not stored["seen"][dropped].any()
    assert torch.equal(stored["logits"][visited], expected[visited])
    assert not torch.equal(stored["logits"][visited], torch.load(folder / "epoch-0.pt", weights_only=True)
                           ["logits"][visited])  # another epoch: other crops and flips, other logits
    assert json.loads((folder / "key.json").read_text())["seed"] == 3


def test_float16_store_rounds_the_same_for_the_recording_and_the_looking_up_run(tmp_path, digits, teacher_state):
    first = trainer(tmp_path, "first", digits, teacher_state, store=tmp_path / "store", dtype="float16")
    first.fit()
    second = trainer(tmp_path, "second", digits, teacher_state, store=tmp_path / "store", dtype="float16")
    second.fit()
    assert equal_weights(first, second)
    stored = torch.load(first.teacher_store.folder / "epoch-0.pt", weights_only=True)
    assert stored["logits"].dtype == torch.float16


def test_another_seed_or_teacher_gets_its_own_key(tmp_path, digits, teacher_state):
    store = tmp_path / "store"
    a = trainer(tmp_path, "a", digits, teacher_state, store=store, epochs=1)
    a.fit()
    b = trainer(tmp_path, "b", digits, teacher_state, store=store, epochs=1, seed=4)  # other order and crops
    b.fit()
    other = {k: v + 0.01 if v.is_floating_point() else v for k, v in teacher_state.items()}
    c = trainer(tmp_path, "c", digits, other, store=store, epochs=1)
    c.fit()
    folders = {a.teacher_store.folder, b.teacher_store.folder, c.teacher_store.folder}
    assert len(folders) == 3
    assert b.summary["teacher_store"]["served_images"] == 0 and c.summary["teacher_store"]["served_images"] == 0


def test_an_interrupted_epoch_is_not_written(tmp_path, digits, teacher_state):
    run = trainer(tmp_path, "short", digits, teacher_state, store=tmp_path / "store", max_steps=2)
    run.fit()
    assert not (run.teacher_store.folder / "epoch-0.pt").exists()  # 2 of its 3 batches: not a whole epoch


def test_a_method_tapping_teacher_features_runs_the_teacher(tmp_path, digits, teacher_state):
    run = trainer(tmp_path, "at", digits, teacher_state, store=tmp_path / "store", losses={"ce": 1.0, "at": 100.0},
                  epochs=1)
    calls = count_forwards(run.teacher)
    run.fit()
    assert run.summary["teacher_store"]["used"] is False
    assert "tap the teacher's features" in run.summary["teacher_store"]["reason"]
    assert calls[0] == 1 + 3  # the dry run, then every step
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").iterdir())


def test_a_damaged_file_is_recomputed(tmp_path, digits, teacher_state):
    first = trainer(tmp_path, "first", digits, teacher_state, store=tmp_path / "store", epochs=1)
    first.fit()
    (first.teacher_store.folder / "epoch-0.pt").write_bytes(b"not a torch file")
    second = trainer(tmp_path, "second", digits, teacher_state, store=tmp_path / "store", epochs=1)
    second.fit()
    assert second.summary["teacher_store"]["computed_images"] == 96
    assert equal_weights(first, second)


def test_compare_pays_the_teacher_once_per_seed(tmp_path):
    """In a comparison the first logit method records the teacher's logits, the next ones look them up; a
    feature method runs the teacher itself."""
    from kdforge.recipes.compare import run_compare

    base = {"data": {"name": "digits", "batch_size": 32, "augment": AUGMENT,
                     "few_shot": {"shots": 10, "seed": 0, "labels": True}},
            "student": {"model": "resnet8"}, "optim": {"name": "sgd", "lr": 0.05},
            "schedule": {"name": "constant", "epochs": 2}, "train": {"tensorboard": False}}
    result = run_compare(base, ["kd", "dkd", "at"], [0], tmp_path / "cmp", teacher_model="resnet14", progress=False)
    summaries = {run.label: json.loads((run.run_dir / "summary.json").read_text()) for run in result["planned"]}
    images = 2 * 100  # 2 epochs of 100 shots (few-shot runs keep the partial batch)
    assert summaries["kd"]["teacher_store"]["computed_images"] == images
    assert summaries["dkd"]["teacher_store"] == {**summaries["kd"]["teacher_store"], "served_images": images,
                                                 "computed_images": 0}
    assert summaries["at"]["teacher_store"]["used"] is False
    assert summaries["student-alone"]["teacher_store"] is None  # no teacher, nothing to store
    assert Path(summaries["kd"]["teacher_store"]["folder"]).parent == tmp_path / "cmp" / "teacher-store"
