"""Tar shards (WebDataset's format): `kdforge pack` writes them, `data.name: webdataset` streams them."""

import hashlib
import tarfile
from pathlib import Path

import pytest
import torch
from jpeg_tree import CLASSES, write_tree
from test_export import run_cli

from kdforge.config import config_from_dict
from kdforge.data import DataError
from kdforge.data.shards import pack_split
from kdforge.data.streaming import StreamingLoader, open_streaming_split
from kdforge.engine import train_from_config
from kdforge.errors import ConfigError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tree(tmp_path_factory.mktemp("pack_src") / "imagenet")


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):
        pack_split(tree, out, split, shard_size=48, progress=False)
    return out


def source_samples(tree: Path, split: str) -> list[tuple[str, int]]:
    """(SHA-256 of the file, label) of every image of the folder, the label its class folder's rank."""
    return sorted((hashlib.sha256(f.read_bytes()).hexdigest(), CLASSES.index(f.parent.name))
                  for f in (tree / split).glob("*/*.JPEG"))


def split_of(shards, split="train", **data):
    d = config_from_dict({"data": {"name": "webdataset", "root": str(shards), "options": {"image_size": 32},
                                   **data}}).data
    return open_streaming_split(d, split, train=split == "train")


def test_pack_writes_every_image_unchanged_with_its_label_in_shuffled_shards(tree, shards):
    files = sorted(shards.glob("train-*.tar"))
    assert [f.name for f in files] == [f"train-{i:06d}.tar" for i in range(5)]  # 200 images / 48 per shard
    read = []
    for f in files:  # read with the standard library alone
        with tarfile.open(f) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        keys = sorted({name.rpartition(".")[0] for name in members})
        assert set(members) == {f"{k}.{ext}" for k in keys for ext in ("jpg", "cls")}
        read += [(hashlib.sha256(members[f"{k}.jpg"]).hexdigest(), int(members[f"{k}.cls"])) for k in keys]
        assert len({label for _, label in read[-len(keys):]}) > 1  # shuffled: a shard is not one class
    assert sorted(read) == source_samples(tree, "train")
    assert sorted(read) != read  # and the shuffle reached across shards


def test_the_reader_gives_the_packed_samples_and_the_folder_classes(tree, shards):
    train, val = split_of(shards), split_of(shards, "val")
    assert train.classes == val.classes == list(CLASSES) and (len(train), len(val)) == (200, 60)
    from kdforge.data.streaming.dataset import read_range

    got = sorted((hashlib.sha256(read_range(*train.locations[i])).hexdigest(), int(train.labels[i]))
                 for i in range(len(train)))
    assert got == source_samples(tree, "train")
    folder = open_streaming_split(config_from_dict({"data": {"name": "imagenet", "root": str(tree),
                                                             "options": {"image_size": 32}}}).data, "val",
                                  train=False)
    by_bytes = {hashlib.sha256(Path(p).read_bytes()).hexdigest(): i for i, p in enumerate(folder.paths)}
    for i in range(0, 60, 7):  # the same centre crop as from the folder
        j = by_bytes[hashlib.sha256(read_range(*val.locations[i])).hexdigest()]
        assert torch.equal(val.decode(i, 0), folder.decode(j, 0))


def test_the_webdataset_package_reads_the_shards(tree, shards):
    import webdataset as wds

    urls = [str(f) for f in sorted(shards.glob("val-*.tar"))]
    samples = [(hashlib.sha256(s["jpg"]).hexdigest(), int(s["cls"])) for s in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(samples) == source_samples(tree, "val")


def test_ranks_read_disjoint_whole_shards_of_equal_length(shards):
    train = split_of(shards)
    shard_sets, lengths, seen = [], [], []
    for rank in range(2):
        loader = StreamingLoader(train, 16, shuffle=True, drop_last=False, device="cpu", seed=3, workers=0,
                                 rank=rank, world_size=2, with_indices=True)
        order = loader.epoch_indices(1)
        shard_sets.append({train.locations[i][0] for i in order.tolist()})
        lengths.append(len(order))
        seen += order.tolist()
    assert not shard_sets[0] & shard_sets[1] and len(shard_sets[0] | shard_sets[1]) == 5
    assert lengths == [100, 100]  # ceil(200 / 2) each: the rank with fewer images repeats some of its own
    rank0 = StreamingLoader(train, 16, shuffle=True, drop_last=False, device="cpu", seed=3, workers=0, rank=0,
                            world_size=2)
    dealt = {tuple(dict.fromkeys(train.locations[i][0] for i in rank0.epoch_indices(e).tolist())) for e in range(6)}
    assert len(dealt) > 1  # each epoch deals the shards anew (which shards, in which order)
    with pytest.raises(DataError, match="5 shard\\(s\\) for 6 processes"):
        StreamingLoader(train, 4, shuffle=True, drop_last=False, device="cpu", seed=0, rank=0,
                        world_size=6).epoch_indices(0)


def test_a_resumed_epoch_continues_with_the_same_batches(shards):
    train = split_of(shards)
    make = lambda workers: StreamingLoader(train, 32, shuffle=True, drop_last=True, device="cpu", seed=0,  # noqa: E731
                                           workers=workers, with_indices=True)
    whole = make(0)
    whole.set_epoch(2)
    full = list(whole)
    resumed = make(2)
    resumed.set_epoch(2, start_batch=4)
    rest = list(resumed)
    assert len(rest) == len(full) - 4
    for (xa, ya, ia), (xb, yb, ib) in zip(full[4:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_shards_without_an_index_are_scanned(shards, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in shards.glob("*.tar"):  # the shards without their index files
        (bare / f.name).write_bytes(f.read_bytes())
    scanned, indexed = split_of(bare, "val"), split_of(shards, "val")
    assert scanned.classes == ["0", "1", "2", "3"]  # the labels alone: class names live in the index
    assert [(Path(f).name, o, n) for f, o, n in scanned.locations] == [(Path(f).name, o, n)
                                                                        for f, o, n in indexed.locations]
    assert torch.equal(scanned.labels, indexed.labels)
    for pattern, images in (("val-{000000..000001}.tar", 60), ("val-{000000..000000}.tar", 48)):
        named = open_streaming_split(config_from_dict({"data": {
            "name": "webdataset", "root": str(bare),
            "options": {"image_size": 32, "shards": {"val": pattern}}}}).data, "val", train=False)
        assert len(named) == images  # a brace range names the shards explicitly (48 a shard)


def test_training_on_shards_and_the_errors(shards, tmp_path, capsys):
    summary = train_from_config(config_from_dict({
        "name": "shards", "output_dir": str(tmp_path), "student": {"model": "resnet8"}, "losses": {"ce": 1},
        "data": {"name": "webdataset", "root": str(shards), "eval_split": "val", "workers": 1, "batch_size": 32,
                 "options": {"image_size": 32}},
        "schedule": {"epochs": 1}, "train": {"progress": False, "tensorboard": False, "device": "cpu",
                                             "precision": "fp32", "max_steps": 3}}))
    assert summary["steps"] == 3 and summary["dataset"] == f"webdataset:{shards.name}" and summary["top1_last"] is not None
    with pytest.raises(ConfigError, match="webdataset shards are always streamed"):
        train_from_config(config_from_dict({"name": "x", "output_dir": str(tmp_path), "data": {
            "name": "webdataset", "root": str(shards), "streaming": False}}))
    with pytest.raises(DataError, match=r"webdataset: no shard .*test-\*\.tar \(write shards with `kdforge pack"):
        split_of(shards, "test")
    code, out, err = run_cli(capsys, "pack", shards / "nowhere", tmp_path / "o")
    assert code != 0 and "pack:" in err and "is not a folder" in err and "\n" not in err.strip()


def test_kdforge_pack_packs_every_split(tree, tmp_path, capsys):
    code, out, err = run_cli(capsys, "pack", tree, tmp_path / "out", "--shard-size", "100")
    assert code == 0, err
    assert out.splitlines() == [f"train: 200 images of 4 classes in 2 shard(s) {tmp_path / 'out' / 'train-*.tar'}",
                                f"val: 60 images of 4 classes in 1 shard(s) {tmp_path / 'out' / 'val-*.tar'}"]
    again = tmp_path / "again"
    pack_split(tree, again, "train", shard_size=100, progress=False)
    for name in ("train-000000.tar", "train-000001.tar"):  # same seed: the same bytes
        assert (again / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_reading_many_shards_keeps_few_files_open(tree, tmp_path, monkeypatch):
    from kdforge.data.streaming import dataset as streamed

    out = tmp_path / "many"
    pack_split(tree, out, "val", shard_size=2, progress=False)  # 30 shards
    monkeypatch.setattr(streamed, "MAX_OPEN_FILES", 4)
    val = split_of(out, "val", train_split="val")
    seen = [val.decode(i, 0) for i in range(len(val))]
    assert len(seen) == 60 and all(image.shape == (3, 32, 32) for image in seen)
    assert len(streamed._FILES) <= 4


def test_packing_a_split_leaves_other_splits_and_an_index_beside_named_shards_is_used(tree, tmp_path):
    out = tmp_path / "out"
    pack_split(tree, out, "val", shard_size=40, progress=False)
    (out / "val-000000.tar").rename(out / "val-small-000000.tar")  # another split whose name starts the same
    (out / "val-000001.tar").rename(out / "val-small-000001.tar")
    (out / "val.index.json").rename(out / "val-small.index.json")
    pack_split(tree, out, "val", shard_size=40, progress=False)
    assert sorted(f.name for f in out.glob("*.tar")) == ["val-000000.tar", "val-000001.tar", "val-small-000000.tar",
                                                        "val-small-000001.tar"]
    sub = tmp_path / "root" / "sub"
    sub.mkdir(parents=True)
    for f in out.glob("val-0*"):
        (sub / f.name).write_bytes(f.read_bytes())
    (sub / "val.index.json").write_bytes((out / "val.index.json").read_bytes())
    named = split_of(tmp_path / "root", "val", options={"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                                                        "shards": {"val": "sub/val-{000000..000001}.tar"}})
    assert named.classes == list(CLASSES)  # read from sub/val.index.json, beside the shards
