"""Image folders streamed from disk (`data.streaming`, `data/streaming/`), on a generated ImageNet-style JPEG tree."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from jpeg_tree import CLASSES, garble, truncate, write_tree
from kill_run import sigkill_after
from PIL import Image
from torch import nn

from kdforge.config import config_from_dict
from kdforge.data import DataError, TensorLoader
from kdforge.data.streaming import StreamingLoader, open_streaming_split
from kdforge.data.streaming.transforms import eval_crop, random_resized_box
from kdforge.engine import Trainer, load_checkpoint, train_from_config
from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint
from kdforge.engine.run import load_run_data
from kdforge.errors import ConfigError
from kdforge.methods import Losses


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """260 JPEGs: 4 classes x (50 train + 15 val), 36-79 px on each side."""
    return write_tree(tmp_path_factory.mktemp("jpegs") / "imagenet")


def data_section(root, **extra):
    return {"name": "imagenet", "root": str(root), "eval_split": "val", "streaming": True, "workers": 0,
            "batch_size": 32, "eval_batch_size": 64, "options": {"image_size": 32}, **extra}


def run_config(tmp_path, name, root, *, data=None, **train):
    return config_from_dict({
        "name": name, "seed": 1, "output_dir": str(tmp_path), "student": {"model": "resnet8"},
        "data": data_section(root, **(data or {})), "losses": {"ce": 1},
        "optim": {"lr": 0.05}, "schedule": {"name": "cosine", "epochs": 2},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", **train}})


def loader(split, *, batch_size=32, workers=0, **kw):
    return StreamingLoader(split, batch_size, shuffle=True, drop_last=False, device="cpu", seed=5, workers=workers,
                           with_indices=True, **kw)


def test_random_resized_boxes_lie_inside_follow_their_seed_and_cover_the_scale_range():
    areas = []
    for seed in range(300):
        left, top, w, h = random_resized_box(70, 50, random.Random(seed))
        assert 0 <= left and left + w <= 70 and 0 <= top and top + h <= 50 and w > 0 and h > 0
        assert random_resized_box(70, 50, random.Random(seed)) == (left, top, w, h)
        areas.append(w * h / (70 * 50))
    assert min(areas) < 0.15 and max(areas) > 0.85  # scale (0.08, 1)
    assert random_resized_box(400, 10, random.Random(0))[2:] == (13, 10)  # too wide: centre crop at ratio 4/3


def test_the_eval_crop_is_the_centre_after_resizing_the_short_side():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 49, 3), dtype=np.uint8)
    # the short side (40) already at eval_resize: no resampling, only the centre 32 x 32; the 17 spare
    # columns split as torchvision's CenterCrop does, round(17 / 2) = 8 on the left
    got = eval_crop(Image.fromarray(pixels), 32, 40)
    assert np.array_equal(got, pixels[4:36, 8:40])
    # resized: the short side to 256, the long side 256 * 500 / 333 = 384.38 truncated to 384 (torchvision's
    # Resize), then the centre 224 at offsets (80, 16)
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (333, 500, 3), dtype=np.uint8))
    want = np.asarray(big.resize((384, 256), Image.BILINEAR))[16:240, 80:304]
    assert np.array_equal(eval_crop(big, 224, 256), want)


def test_splits_share_the_train_classes_and_use_imagenet_statistics(tree):
    d = config_from_dict({"data": data_section(tree)}).data
    train, val = open_streaming_split(d, "train", train=True), open_streaming_split(d, "val", train=False)
    assert train.classes == val.classes == list(CLASSES) and (len(train), len(val)) == (200, 60)
    assert train.class_counts().tolist() == [50] * 4 and train.mean == (0.485, 0.456, 0.406)
    assert train.train and not val.train
    image, label, index = val[(7, 0)]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and (label, index) == (0, 7)


def test_batches_do_not_depend_on_the_worker_count(tree):
    train = open_streaming_split(config_from_dict({"data": data_section(tree)}).data, "train", train=True)
    epochs = {}
    for workers in (0, 2):
        run = loader(train, workers=workers)
        run.set_epoch(3)
        epochs[workers] = list(run)
    assert len(epochs[0]) == 7  # 200 images in batches of 32
    for (x0, y0, i0), (x2, y2, i2) in zip(epochs[0], epochs[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(i0, i2)
    other = loader(train)
    other.set_epoch(4)
    assert not torch.equal(next(iter(other))[2], epochs[0][0][2])  # another epoch, another order


def test_two_ranks_see_the_single_process_epoch_split_between_them(tree):
    train = open_streaming_split(config_from_dict({"data": data_section(tree)}).data, "train", train=True)
    whole = loader(train, batch_size=200)
    whole.set_epoch(2)
    (x, _, indices), = list(whole)
    by_index = {int(i): image for i, image in zip(indices, x)}
    seen = []
    for rank in (0, 1):
        share = loader(train, batch_size=25, rank=rank, world_size=2)
        share.set_epoch(2)
        for images, _, idx in share:
            for i, image in zip(idx.tolist(), images):
                assert torch.equal(image, by_index[i])  # the same crop of the same file on either rank
                seen.append(i)
    assert sorted(seen) == list(range(200))  # disjoint shares covering the epoch


class NoBatchNorm(nn.Module):
    """A student whose forward does not depend on how the batch is split across processes."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3)))


def _spawned(rank, world_size, out, rendezvous, root):
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    cfg = run_config(Path(out), "run", root, data={"workers": 1}, max_steps=6)
    train, evaluation, _ = load_run_data(cfg)
    torch.manual_seed(0)
    Trainer(NoBatchNorm(), Losses.from_config({"ce": 1}), train, evaluation, config=cfg,
            run_dir=Path(out) / "run").fit()
    if world_size > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_on_streamed_files_take_the_same_steps_as_one(tree, tmp_path):
    mp.spawn(_spawned, args=(1, str(tmp_path / "one"), "", str(tree)), nprocs=1)
    mp.spawn(_spawned, args=(2, str(tmp_path / "two"), str(tmp_path / "rendezvous"), str(tree)), nprocs=2)
    one, two = (load_checkpoint(tmp_path / n / "run", "last") for n in ("one", "two"))
    assert one["state"]["step"] == two["state"]["step"] == 6
    for key, value in one["student"].items():
        torch.testing.assert_close(two["student"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert one["state"]["history"][-1]["eval_top1"] == pytest.approx(two["state"]["history"][-1]["eval_top1"])


def test_a_stopped_streamed_run_resumes_mid_epoch_to_the_uninterrupted_weights(tree, tmp_path):
    """6 steps an epoch (the partial batch dropped): stopped after 9 (inside epoch 2), resumed with another worker
    count."""
    whole = train_from_config(run_config(tmp_path, "whole", tree))
    cut = train_from_config(run_config(tmp_path, "cut", tree, data={"workers": 2}, max_steps=9))
    assert cut["steps"] == 9 and whole["steps"] == 12
    saved = load_checkpoint(tmp_path / "cut", "last")["state"]
    assert saved["batch_in_epoch"] == 3
    train_from_config(run_config(tmp_path, "cut", tree), resume=True)  # workers 0 now: speed only
    a, b = load_checkpoint(tmp_path / "whole", "last"), load_checkpoint(tmp_path / "cut", "last")
    assert a["state"]["step"] == b["state"]["step"] == 12
    for key, value in a["student"].items():
        assert torch.equal(value, b["student"][key]), key


@pytest.fixture()
def spoiled(tree, tmp_path):
    """A copy of the tree with one truncated and one garbled training JPEG."""
    root = shutil.copytree(tree, tmp_path / "spoiled")
    bad = [truncate(root / "train" / CLASSES[1] / f"{CLASSES[1]}_3.JPEG"),
           garble(root / "train" / CLASSES[2] / f"{CLASSES[2]}_10.JPEG")]
    return root, bad


def test_a_corrupt_file_is_a_one_line_error_naming_it(spoiled, tmp_path):
    root, bad = spoiled
    with pytest.raises(DataError) as caught:
        train_from_config(run_config(tmp_path, "broken", root, data={"workers": 2}, max_steps=7))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("data: cannot read image ")
    assert any(str(path) in message for path in bad) and "data.skip_bad_files: true" in message


def test_skip_bad_files_leaves_them_out_and_lists_them_in_the_summary(spoiled, tmp_path):
    root, bad = spoiled
    summary = train_from_config(run_config(tmp_path, "skipping", root, data={"skip_bad_files": True,
                                                                             "drop_last": False}, max_steps=7))
    skipped = summary["skipped_files"]
    assert skipped["count"] == 2 and sorted(skipped["files"]) == sorted(str(p) for p in bad)
    assert all(skipped["files"][str(p)] for p in bad)  # with Pillow's reason
    assert summary["images_seen"] == 200 - 2  # one whole epoch (7 batches) less the two files
    assert json.loads((tmp_path / "skipping" / "summary.json").read_text())["skipped_files"] == skipped


def test_streaming_is_chosen_above_the_memory_budget_and_refused_for_data_in_memory(tree, tmp_path, capsys):
    auto = run_config(tmp_path, "auto", tree, data={"streaming": None, "memory_budget_gb": 0.0005}).data
    train, evaluation, _ = load_run_data(config_from_dict({"data": config_dict(auto)}))
    assert getattr(train, "streaming", False) and not evaluation.train
    assert "would take 0.0 GB in memory (more than data.memory_budget_gb=0.0005): streaming" in capsys.readouterr().err
    in_memory, _, _ = load_run_data(config_from_dict({"data": {**config_dict(auto), "memory_budget_gb": 1.0}}))
    assert not getattr(in_memory, "streaming", False) and in_memory.images.shape == (200, 3, 32, 32)
    with pytest.raises(ConfigError, match="data.streaming: only image folders .* digits is held in memory"):
        load_run_data(config_from_dict({"data": {"streaming": True}}))
    with pytest.raises(ConfigError, match="data.few_shot: a few-shot set is small"):
        load_run_data(config_from_dict({"data": {**data_section(tree), "few_shot": {"shots": 2}}}))


def config_dict(data_config):
    from kdforge.config_values import config_to_dict

    return config_to_dict(data_config)


def test_eval_of_a_streamed_run_scores_the_centre_crops(tree, tmp_path):
    train_from_config(run_config(tmp_path, "scored", tree, max_steps=3))
    metrics = evaluate_checkpoint(tmp_path / "scored", device="cpu")
    model_ckpt = load_checkpoint(tmp_path / "scored", "last")
    from kdforge.engine.checkpoint import load_model
    from kdforge.engine.evaluate import evaluate
    from kdforge.engine.precision import resolve_precision

    model, _ = load_model(tmp_path / "scored")
    val = open_streaming_split(config_from_dict({"data": data_section(tree)}).data, "val", train=False).materialize()
    want = evaluate(model, TensorLoader(val, 64, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0),
                    resolve_precision("fp32", None, torch.device("cpu")))
    assert metrics["n"] == 60 and metrics["top1"] == pytest.approx(want["top1"], abs=1e-9)
    assert model_ckpt["data"]["image_size"] == 32


def _cli(tree, out, name, *extra):
    return [sys.executable, "-m", "kdforge", "train", f"--set=output_dir={out}", f"--set=name={name}",
            "--set=student.model=resnet8", "--set=seed=4", "--set=schedule.epochs=2", "--set=data.name=imagenet",
            f"--set=data.root={tree}", "--set=data.streaming=true", "--set=data.eval_split=val",
            "--set=data.batch_size=16", "--set=data.options.image_size=32", "--set=train.precision=fp32",
            "--set=train.device=cpu", "--set=train.tensorboard=false", "--set=train.progress=false",
            "--set=train.log_every=1", "--set=train.checkpoint_every_steps=3", *extra]


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tree, tmp_path):
    """SIGKILL of `kdforge train` (2 decoding workers alive) inside its first epoch, then `--resume` with 0
    workers: the same weights as a run never killed (12 steps an epoch)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(tree, tmp_path, "whole", "--set=data.workers=0"), cwd=root, env=env, check=True,
                   capture_output=True)
    sigkill_after(_cli(tree, tmp_path, "killed", "--set=data.workers=2"), tmp_path / "killed" / "log.jsonl", 7,
                  cwd=root, env=env)
    saved = load_checkpoint(tmp_path / "killed", "last")["state"]
    assert 0 < saved["batch_in_epoch"] < 12 and saved["step"] < 12  # it died inside the first epoch
    done = subprocess.run(_cli(tree, tmp_path, "killed", "--set=data.workers=0", "--resume"), cwd=root, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    whole, again = load_checkpoint(tmp_path / "whole", "last"), load_checkpoint(tmp_path / "killed", "last")
    assert again["state"]["step"] == whole["state"]["step"] == 24
    for key, value in whole["student"].items():
        assert torch.equal(value, again["student"][key]), key


def test_a_run_stopped_by_a_corrupt_file_resumes_skipping_it_and_keeps_the_list(tree, tmp_path):
    """Checkpoints every step; a corrupt file in batch 2 stops the run after batches 0 and 1; `--resume` with
    skip_bad_files (a change a resume allows) goes on; what was skipped before a stop stays listed."""
    root = shutil.copytree(tree, tmp_path / "spoiled")
    data = {"drop_last": False}
    train = open_streaming_split(run_config(tmp_path, "x", root).data, "train", train=True)
    keys = StreamingLoader(train, 32, shuffle=True, drop_last=False, device="cpu", seed=1).batch_keys(0)
    bad = [truncate(Path(train.paths[keys[2][0][0]])), garble(Path(train.paths[keys[4][5][0]]))]
    with pytest.raises(DataError, match="cannot read image"):
        train_from_config(run_config(tmp_path, "stopped", root, data=data, max_steps=7, checkpoint_every_steps=1))
    assert load_checkpoint(tmp_path / "stopped", "last")["state"]["step"] == 2  # batches 0 and 1 trained, saved
    skipping = {**data, "skip_bad_files": True}
    summary = train_from_config(run_config(tmp_path, "stopped", root, data=skipping, max_steps=7), resume=True)
    assert summary["steps"] == 7 and sorted(summary["skipped_files"]["files"]) == sorted(map(str, bad))
    cut = train_from_config(run_config(tmp_path, "cut", root, data=skipping, max_steps=4))  # past batch 2 only
    assert list(load_checkpoint(tmp_path / "cut", "last")["state"]["skipped_files"]) == [str(bad[0])]
    summary = train_from_config(run_config(tmp_path, "cut", root, data=skipping, max_steps=7), resume=True)
    assert cut["skipped_files"]["count"] == 1 and sorted(summary["skipped_files"]["files"]) == sorted(map(str, bad))


def test_the_teacher_cache_is_refused_for_streamed_data(tree, tmp_path):
    train_from_config(run_config(tmp_path, "teacher", tree, max_steps=1))
    cfg = config_from_dict({**config_dict_of(run_config(tmp_path, "cached", tree, max_steps=1)),
                            "teacher": {"checkpoint": str(tmp_path / "teacher")}, "losses": {"kd": 1}})
    cfg.train.teacher_cache = True
    with pytest.raises(ConfigError, match="train.teacher_cache: a streamed dataset is cropped afresh every epoch"):
        train_from_config(cfg)


def config_dict_of(cfg):
    from kdforge.config_values import config_to_dict

    return config_to_dict(cfg)


def test_hint_probes_leave_unreadable_files_out_under_skip_bad_files(tree, tmp_path):
    from kdforge.hints.probe import probe_features
    from kdforge.models import build_model

    root = shutil.copytree(tree, tmp_path / "spoiled")
    cfg = run_config(tmp_path, "x", root, data={"skip_bad_files": True})
    train = open_streaming_split(cfg.data, "train", train=True)
    first_bad = truncate(Path(train.paths[2]))
    garble(Path(train.paths[7]))
    model = build_model("resnet8", num_classes=4)
    features = probe_features(model, train, ["layer1", "layer3"], torch.arange(10), batch_size=4, device="cpu")
    assert [f.shape for f in features] == [(8, 16), (8, 64)]  # the 8 readable images of the 10
    strict = open_streaming_split(run_config(tmp_path, "y", root).data, "train", train=True)
    with pytest.raises(DataError, match=f"cannot read image {first_bad}"):
        probe_features(model, strict, ["layer1"], torch.arange(10), batch_size=4, device="cpu")


def test_each_image_has_its_own_crop_seed_that_follows_it_not_its_place_in_the_batch():
    """The crop and flip of image i in epoch e are drawn from derive_seed("augment", seed, e, i): the seeds of one
    batch differ, and an image keeps its seed wherever another epoch order puts it."""
    from kdforge.data.loader import derive_seed
    from kdforge.data.streaming.loader import BatchKeys

    order = torch.arange(12)
    keys = BatchKeys(order, 4, 3, 0, seed=7, epoch=2)
    batch = keys[1]
    assert [i for i, _ in batch] == [4, 5, 6, 7]
    assert len({s for _, s in batch}) == 4  # every image of the batch its own crop
    assert all(s == derive_seed("augment", 7, 2, i) for i, s in batch)
    shuffled = BatchKeys(order.flip(0), 4, 3, 0, seed=7, epoch=2)
    seeds = {i: s for k in range(3) for i, s in keys[k]}
    assert {i: s for k in range(3) for i, s in shuffled[k]} == seeds  # the seed follows the image
    assert dict(BatchKeys(order, 4, 3, 0, seed=7, epoch=3)[1]) != dict(batch)  # and the epoch
