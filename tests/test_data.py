"""Tests for kdforge.data: loaders read the official formats exactly; augmentation and loader are exact and deterministic."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from kdforge.data import (
    Augment,
    DataError,
    ImageTensorDataset,
    TensorLoader,
    UnknownDatasetError,
    dataset_names,
    load_dataset,
    normalize,
)
from kdforge.data.augment import random_crop, random_hflip
from kdforge.data.datasets.cifar import CIFAR10_CLASSES

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- fixtures: official formats


def _dump(obj, path, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _expected_from_rows(rows: np.ndarray) -> np.ndarray:
    """Pixel (n, c, h, w) of the official layout: row n, column c*1024 + h*32 + w."""
    n = rows.shape[0]
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    col = c * 1024 + h * 32 + w  # (3, 32, 32)
    return rows[np.arange(n)[:, None, None, None], col[None]]


@pytest.fixture(scope="module")
def cifar10_dir(tmp_path_factory):
    parent = tmp_path_factory.mktemp("c10")
    root = parent / "cifar-10-batches-py"
    root.mkdir()
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = 3 + i
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, 10, size=n)]
        d = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img{j}.png".encode() for j in range(n)],
        }
        _dump(d, root / name, protocol=2 if i % 2 else pickle.HIGHEST_PROTOCOL)
        written[name] = (data, labels)
    _dump(
        {b"num_cases_per_batch": 10000, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072},
        root / "batches.meta",
    )
    return parent, written


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory):
    parent = tmp_path_factory.mktemp("c100")
    root = parent / "cifar-100-python"
    root.mkdir()
    written = {}
    for name, n in (("train", 7), ("test", 4)):
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in RNG.integers(0, 100, size=n)]
        coarse = [int(v) for v in RNG.integers(0, 20, size=n)]
        _dump(
            {b"filenames": [b"x.png"] * n, b"batch_label": b"b", b"fine_labels": fine, b"coarse_labels": coarse, b"data": data},
            root / name,
        )
        written[name] = (data, fine, coarse)
    fine_names = [f"fine{i:02d}".encode() for i in range(100)]
    coarse_names = [f"coarse{i:02d}".encode() for i in range(20)]
    _dump({b"fine_label_names": fine_names, b"coarse_label_names": coarse_names}, root / "meta")
    return parent, written


def _make_cifar10(root, n_per=2, **override):
    """A minimal valid cifar-10-batches-py folder at root; override maps file name -> dict or bytes."""
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        obj = override.get(name, {b"data": np.zeros((n_per, 3072), np.uint8), b"labels": [0] * n_per})
        if isinstance(obj, bytes):
            (root / name).write_bytes(obj)
        elif obj is not None:
            _dump(obj, root / name)
    return root


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_exact_pixels_and_labels(cifar10_dir):
    parent, written = cifar10_dir
    train = load_dataset("cifar10", str(parent), "train")
    rows = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    labels = sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    assert train.images.dtype == torch.uint8 and train.images.shape == (rows.shape[0], 3, 32, 32)
    assert train.images.is_contiguous()
    assert np.array_equal(train.images.numpy(), _expected_from_rows(rows))
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == labels
    assert train.classes == CIFAR10_CLASSES and train.num_classes == 10
    assert train.in_channels == 3 and train.image_size == 32
    # spot-check the plane ordering by hand: red plane first, then green, then blue, rows of 32
    assert int(train.images[0, 1, 2, 5]) == int(rows[0, 1024 + 2 * 32 + 5])
    assert int(train.images[4, 2, 31, 0]) == int(rows[4, 2048 + 31 * 32])
    assert len(train.mean) == 3 and abs(train.mean[0] - 0.4914) < 1e-3

    # root may be the folder itself; names are normalised
    test = load_dataset("CIFAR-10", str(parent / "cifar-10-batches-py"), "test")
    data, lab = written["test_batch"]
    assert np.array_equal(test.images.numpy(), _expected_from_rows(data))
    assert test.labels.tolist() == lab


def test_cifar100_fine_and_coarse(cifar100_dir):
    parent, written = cifar100_dir
    for split in ("train", "test"):
        data, fine, coarse = written[split]
        ds = load_dataset("cifar100", parent, split)
        assert np.array_equal(ds.images.numpy(), _expected_from_rows(data))
        assert ds.labels.tolist() == fine
        assert ds.num_classes == 100 and ds.classes[7] == "fine07"
        dc = load_dataset("cifar100", parent / "cifar-100-python", split, label_type="coarse")
        assert dc.labels.tolist() == coarse
        assert dc.num_classes == 20 and dc.classes[3] == "coarse03"
        assert torch.equal(dc.images, ds.images)
    with pytest.raises(ValueError, match="label_type"):
        load_dataset("cifar100", parent, "train", label_type="medium")


def test_cifar_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="cifar.html") as ei:
        load_dataset("cifar100", tmp_path / "nowhere", "train")
    assert "nowhere" in str(ei.value)
    root = _make_cifar10(tmp_path / "cifar-10-batches-py", data_batch_4=None)
    with pytest.raises(DataError, match="data_batch_4") as ei:
        load_dataset("cifar10", tmp_path, "train")
    assert "cifar-10-python.tar.gz" in str(ei.value)
    # the test split alone does not need the train batches
    assert len(load_dataset("cifar10", root, "test")) == 2
    # empty parent folder: nothing that looks like CIFAR
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path / "empty", "train")


def test_cifar_truncated_pickle(tmp_path):
    good = pickle.dumps({b"data": np.zeros((5, 3072), np.uint8), b"labels": [1] * 5}, protocol=2)
    _make_cifar10(tmp_path / "cifar-10-batches-py", data_batch_3=good[: len(good) // 2])
    with pytest.raises(DataError, match="data_batch_3") as ei:
        load_dataset("cifar10", tmp_path, "train")
    assert "truncated" in str(ei.value)
    # a file that is not a pickle at all
    _make_cifar10(tmp_path / "b" / "cifar-10-batches-py", test_batch=b"\x00garbage\xff" * 10)
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path / "b", "test")
    # an empty file
    _make_cifar10(tmp_path / "c" / "cifar-10-batches-py", test_batch=b"")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path / "c", "test")


def test_cifar_wrong_keys_and_shapes(tmp_path):
    _make_cifar10(tmp_path / "a" / "cifar-10-batches-py", test_batch={b"images": np.zeros((2, 3072), np.uint8), b"labels": [0, 0]})
    with pytest.raises(DataError, match=r"test_batch.*b'data'"):
        load_dataset("cifar10", tmp_path / "a", "test")
    _make_cifar10(tmp_path / "b" / "cifar-10-batches-py", test_batch={b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 0]})
    with pytest.raises(DataError, match=r"b'labels'"):
        load_dataset("cifar10", tmp_path / "b", "test")
    _make_cifar10(tmp_path / "c" / "cifar-10-batches-py", test_batch={b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 0]})
    with pytest.raises(DataError, match=r"3072"):
        load_dataset("cifar10", tmp_path / "c", "test")
    _make_cifar10(tmp_path / "d" / "cifar-10-batches-py", test_batch={b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path / "d", "test")
    _make_cifar10(tmp_path / "e" / "cifar-10-batches-py", test_batch=pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="dict"):
        load_dataset("cifar10", tmp_path / "e", "test")


def test_cifar_label_out_of_range(tmp_path):
    _make_cifar10(
        tmp_path / "cifar-10-batches-py",
        data_batch_2={b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 10, 1]},
    )
    with pytest.raises(DataError, match=r"data_batch_2.*out of range|label 10 in .*data_batch_2"):
        load_dataset("cifar10", tmp_path, "train")
    root = tmp_path / "x" / "cifar-100-python"
    root.mkdir(parents=True)
    _dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [3, 4], b"coarse_labels": [1, 20]}, root / "test")
    assert load_dataset("cifar100", root, "test").labels.tolist() == [3, 4]
    with pytest.raises(DataError, match="label 20"):
        load_dataset("cifar100", root, "test", label_type="coarse")


def test_cifar_pickle_written_by_old_numpy(tmp_path):
    """The official files were pickled by Python 2 / numpy 1.x: globals name numpy.core.multiarray."""
    data = RNG.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"data": data, b"labels": [4, 5, 6]}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw
    _make_cifar10(tmp_path / "cifar-10-batches-py", test_batch=raw)
    ds = load_dataset("cifar10", tmp_path, "test")
    assert np.array_equal(ds.images.numpy(), _expected_from_rows(data)) and ds.labels.tolist() == [4, 5, 6]
    assert ds.classes == CIFAR10_CLASSES  # no batches.meta: the official names


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    _make_cifar10(tmp_path / "cifar-10-batches-py", test_batch=pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path, "test")


# --------------------------------------------------------------------------- SVHN


def _savemat(path, **arrays):
    from scipy.io import savemat

    savemat(str(path), arrays, format="5")


def test_svhn_reads_official_layout(tmp_path):
    pytest.importorskip("scipy")
    n = 9
    x = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = np.array([[10], [1], [2], [3], [4], [5], [6], [9], [10]], dtype=np.uint8)
    _savemat(tmp_path / "train_32x32.mat", X=x, y=y)
    _savemat(tmp_path / "test_32x32.mat", X=x[..., :4], y=y[:4])
    ds = load_dataset("svhn", tmp_path, "train")
    assert ds.images.shape == (n, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 9, 0]
    for (nn, c, h, w) in [(0, 0, 0, 0), (3, 1, 7, 20), (8, 2, 31, 5), (5, 0, 12, 31)]:
        assert int(ds.images[nn, c, h, w]) == int(x[h, w, c, nn])
    assert np.array_equal(ds.images.numpy(), x.transpose(3, 2, 0, 1))
    assert ds.classes == [str(i) for i in range(10)]
    # parent folder with an svhn/ sub-folder works too
    sub = tmp_path / "p" / "svhn"
    sub.mkdir(parents=True)
    (sub / "test_32x32.mat").write_bytes((tmp_path / "test_32x32.mat").read_bytes())
    assert load_dataset("svhn", tmp_path / "p", "test").labels.tolist() == [0, 1, 2, 3]


def test_svhn_errors(tmp_path):
    pytest.importorskip("scipy")
    x = np.zeros((32, 32, 3, 2), np.uint8)
    a = tmp_path / "a"
    a.mkdir()
    _savemat(a / "train_32x32.mat", X=x)  # no y
    with pytest.raises(DataError, match=r"train_32x32\.mat.*'y'"):
        load_dataset("svhn", a, "train")
    with pytest.raises(DataError, match=r"test_32x32\.mat") as ei:  # missing file
        load_dataset("svhn", a, "test")
    assert "ufldl.stanford.edu" in str(ei.value)
    b = tmp_path / "b"
    b.mkdir()
    _savemat(b / "train_32x32.mat", X=np.zeros((2, 3, 32, 32), np.uint8), y=np.ones((2, 1), np.uint8))
    with pytest.raises(DataError, match="32, 32, 3, N"):
        load_dataset("svhn", b, "train")
    c = tmp_path / "c"
    c.mkdir()
    _savemat(c / "train_32x32.mat", X=x, y=np.array([[1], [11]], np.uint8))
    with pytest.raises(DataError, match=r"label 11 .*train_32x32\.mat"):
        load_dataset("svhn", c, "train")
    d = tmp_path / "d"
    d.mkdir()
    _savemat(d / "good.mat", X=np.ones((32, 32, 3, 50), np.uint8), y=np.ones((50, 1), np.uint8))
    raw = (d / "good.mat").read_bytes()
    (d / "train_32x32.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"train_32x32\.mat"):
        load_dataset("svhn", d, "train")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("svhn", tmp_path / "missing", "train")


# --------------------------------------------------------------------------- image folders


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def cinic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cinic") / "CINIC-10"
    written = {}
    for split, per in (("train", 2), ("valid", 1), ("test", 1)):
        items = []
        for k, cls in enumerate(CIFAR10_CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for j in range(per):
                if k == 3 and j == 0:  # some CINIC images are grayscale
                    g = RNG.integers(0, 256, size=(32, 32), dtype=np.uint8)
                    _png(d / f"img{j}.png", g)
                    arr = np.repeat(g[:, :, None], 3, axis=2)
                else:
                    arr = RNG.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    _png(d / f"img{j}.png", arr)
                items.append((arr, k))
        written[split] = items
    return root, written


def test_cinic10_reads_pngs_exactly(cinic_dir):
    root, written = cinic_dir
    for split in ("train", "valid", "test"):
        ds = load_dataset("cinic10", root.parent, split)  # parent of CINIC-10/ works
        items = written[split]
        assert ds.images.shape == (len(items), 3, 32, 32)
        assert ds.classes == CIFAR10_CLASSES
        assert ds.labels.tolist() == [k for _, k in items]
        expected = np.stack([a.transpose(2, 0, 1) for a, _ in items])
        assert np.array_equal(ds.images.numpy(), expected)
    gray = load_dataset("cinic10", root, "train", num_workers=1).images[6]  # class 3, first image
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_cinic10_errors(tmp_path, cinic_dir):
    """Each error names the file or folder and says what is wrong with it."""
    import shutil

    def message(root):
        with pytest.raises(DataError) as info:
            load_dataset("cinic10", root, "test")
        return str(info.value)

    text = message(tmp_path)
    assert f"no data set found in {str(tmp_path)!r}" in text and "CINIC-10.tar.gz" in text
    assert "datashare.ed.ac.uk" in text
    bad = tmp_path / "bad"
    shutil.copytree(cinic_dir[0] / "test", bad / "test")
    frog = bad / "test" / "frog"
    shutil.rmtree(frog)
    text = message(bad)
    assert f"class folder {str(frog)!r} is missing" in text and "one folder per class" in text
    frog.mkdir()
    assert f"class folder {str(frog)!r} has no images (looked for .png" in message(bad)
    (frog / "x.png").write_bytes(b"not a png at all")
    text = message(bad)
    assert f"cannot read image {str(frog / 'x.png')!r} (UnidentifiedImageError" in text
    assert "expected a 32x32 PNG" in text
    _png(frog / "x.png", np.zeros((31, 32, 3), np.uint8))  # 32 wide, 31 high
    assert f"cannot read image {str(frog / 'x.png')!r} (ValueError: image is 32x31, expected 32x32)" in message(bad)


def test_imagefolder_png_jpeg_bmp(tmp_path):
    from PIL import Image

    root = tmp_path / "shapes"
    for cls in ("zebra", "ant", "cat"):
        (root / "train" / cls).mkdir(parents=True)
    (root / "test" / "cat").mkdir(parents=True)  # a split may lack classes; labels follow train
    exact = RNG.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    _png(root / "train" / "ant" / "a.png", exact)  # already 16x16: kept exactly
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(root / "train" / "ant" / "b.jpg", quality=95)
    Image.fromarray(np.full((20, 20, 3), 10, np.uint8)).save(root / "train" / "cat" / "c.JPEG", quality=95)
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(root / "train" / "zebra" / "d.bmp")
    _png(root / "train" / "zebra" / "e.png", np.full((8, 8), 50, np.uint8))  # grayscale
    (root / "train" / "zebra" / "notes.txt").write_text("ignored")
    _png(root / "test" / "cat" / "f.png", np.full((16, 16, 3), 7, np.uint8))

    ds = load_dataset("imagefolder", root, "train", image_size=16)
    assert ds.classes == ["ant", "cat", "zebra"]
    assert ds.labels.tolist() == [0, 0, 1, 2, 2]
    assert ds.images.shape == (5, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[0].numpy(), exact.transpose(2, 0, 1))
    assert (ds.images[1].int() - 200).abs().max() <= 3  # JPEG, resized
    assert (ds.images[2].int() - 10).abs().max() <= 3
    assert int(ds.images[3].min()) == int(ds.images[3].max()) == 90
    assert int(ds.images[4].min()) == int(ds.images[4].max()) == 50
    # statistics from the training images
    expect_mean = ds.images.double().div(255).mean(dim=(0, 2, 3))
    assert np.allclose(ds.mean, expect_mean.numpy(), atol=1e-6)

    test = load_dataset("imagefolder", root, "test", image_size=16)
    assert test.classes == ds.classes and test.labels.tolist() == [1]
    assert test.mean == ds.mean and test.std == ds.std  # train statistics
    grey = load_dataset("imagefolder", root, "train", image_size=8, channels=1, resize="center_crop")
    assert grey.images.shape == (5, 1, 8, 8) and len(grey.mean) == 1

    with pytest.raises(DataError, match="val"):
        load_dataset("imagefolder", root, "val")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no images"):
        load_dataset("imagefolder", root, "train")


# --------------------------------------------------------------------------- digits and the registry


def test_digits_split():
    train = load_dataset("digits")
    test = load_dataset("digits", None, "test")
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape[1:] == (1, 32, 32) and train.images.dtype == torch.uint8
    assert int(train.images.min()) == 0 and int(train.images.max()) == 255
    counts = test.class_counts()
    assert counts.sum() == 360 and counts.min() >= 33 and counts.max() <= 39
    again = load_dataset("digits", "/ignored", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert train.mean == test.mean and 0 < train.mean[0] < 1
    rgb = load_dataset("digits", split="test", channels=3)
    assert rgb.images.shape == (360, 3, 32, 32) and rgb.in_channels == 3 and len(rgb.mean) == 3
    assert torch.equal(rgb.images[:, 0], test.images[:, 0]) and torch.equal(rgb.images[:, 2], test.images[:, 0])
    # disjoint: no test image is an exact copy of a train image of a different row
    train_set = {bytes(x.numpy().tobytes()) for x in train.images}
    assert sum(bytes(x.numpy().tobytes()) in train_set for x in test.images) < 5


def test_digits_image_size_keeps_the_split_and_8_is_the_native_pixels():
    from sklearn.datasets import load_digits

    native = load_dataset("digits", split="train", image_size=8)
    small = load_dataset("digits", split="train", image_size=16)
    full = load_dataset("digits", split="train")
    assert native.images.shape[1:] == (1, 8, 8) and small.images.shape[1:] == (1, 16, 16)
    assert torch.equal(native.labels, full.labels) and torch.equal(small.labels, full.labels)
    raw = load_digits()
    # the same rows as the 32x32 split: each native image is its sklearn image, 0..16 scaled to 0..255
    first = torch.from_numpy(raw.images).flatten(1)
    want = (first * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    rows = [next(i for i in range(len(want)) if torch.equal(want[i], img.flatten())) for img in native.images[:5]]
    assert [int(raw.target[i]) for i in rows] == native.labels[:5].tolist()
    with pytest.raises(ValueError, match="image_size must be one of"):
        load_dataset("digits", split="train", image_size=17)


def test_registry():
    names = dataset_names()
    assert {"digits", "cifar10", "cifar100", "svhn", "cinic10", "imagefolder"} <= set(names)
    with pytest.raises(UnknownDatasetError, match="cifar10") as ei:
        load_dataset("cifar01")
    assert "cifar10" in ei.value.suggestions
    with pytest.raises(TypeError, match="channels"):
        load_dataset("digits", split="train", channelz=3)
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="valid")


def test_dataset_validation_and_subset():
    imgs = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    ok = dict(images=imgs, labels=torch.tensor([0, 1, 2, 1]), classes=["a", "b", "c"], mean=(0.5,) * 3, std=(0.2,) * 3, name="t")
    ds = ImageTensorDataset(**ok)
    assert len(ds) == 4 and ds.num_classes == 3 and ds.image_size == 8
    with pytest.raises(TypeError, match="uint8"):
        ImageTensorDataset(**{**ok, "images": imgs.float()})
    with pytest.raises(TypeError, match="int64"):
        ImageTensorDataset(**{**ok, "labels": torch.tensor([0, 1, 2, 1], dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ImageTensorDataset(**{**ok, "labels": torch.tensor([0, 1, 3, 1])})
    with pytest.raises(ValueError, match="shape"):
        ImageTensorDataset(**{**ok, "images": imgs[0]})
    with pytest.raises(ValueError, match="mean"):
        ImageTensorDataset(**{**ok, "mean": (0.5,)})
    nc = ImageTensorDataset(**{**ok, "images": torch.zeros(4, 8, 8, 3, dtype=torch.uint8).permute(0, 3, 1, 2)})
    assert nc.images.is_contiguous()
    sub = ds.subset([3, 0])
    assert sub.labels.tolist() == [1, 0] and sub.classes == ds.classes and sub.mean == ds.mean
    assert ds.subset(torch.tensor([True, False, True, False])).labels.tolist() == [0, 2]
    assert len(ds.subset([])) == 0


# --------------------------------------------------------------------------- augmentation


def _batch(b=64, c=3, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_hflip_exact():
    x = _batch()
    out = random_hflip(x, torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == torch.uint8
    flipped = (out == x.flip(3)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 0 < int(flipped.sum()) < len(x)
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(3)))
    assert torch.equal(random_hflip(x, torch.Generator(), p=0.0), x)
    assert torch.equal(random_hflip(x, torch.Generator(), p=1.0), x.flip(3))


def test_crop_windows_of_padded_input():
    pad = 2
    x = _batch(b=300)
    out = random_crop(x, pad, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    h, w = x.shape[2:]
    seen = set()
    for i in range(len(x)):
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(hits) == 1, f"image {i}: matches windows {hits}"
        seen.add(hits[0])
    assert len(seen) == (2 * pad + 1) ** 2  # all offsets occur, including the extremes
    assert torch.equal(out, random_crop(x, pad, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, random_crop(x, pad, torch.Generator().manual_seed(6)))
    assert torch.equal(random_crop(x, 0, torch.Generator()), x)
    assert random_crop(x.float(), 1, torch.Generator()).dtype == torch.float32


def test_augment_object():
    aug = Augment(crop_padding=4, hflip=True)
    x = _batch(b=16, h=32, w=32)
    a = aug(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(0)))
    assert aug.is_random and hash(aug.key()) is not None
    assert Augment(crop_padding=4, hflip=False).key() != aug.key()
    ident = Augment(crop_padding=0, hflip=False)
    assert not ident.is_random and ident == Augment.none()
    assert torch.equal(ident(x, torch.Generator()), x)
    with pytest.raises(ValueError):
        Augment(crop_padding=-1)


def test_normalize():
    x = _batch(b=4)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = normalize(x, mean, std)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    assert y.dtype == torch.float32
    assert torch.allclose(y, (x.float() / 255 - m) / s, atol=1e-6)
    assert torch.allclose(normalize(x.float() / 255, mean, std), y, atol=1e-6)
    assert torch.allclose(normalize(x[0], mean, std), y[0], atol=1e-6)
    assert normalize(x, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16


# --------------------------------------------------------------------------- loader


def _indexed_dataset(n=100, c=3, size=8):
    """Example i has label i and every pixel equal to i % 256, so batches reveal their indices."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, c, size, size).contiguous()
    return ImageTensorDataset(images, torch.arange(n), [str(i) for i in range(n)], (0.5,) * c, (0.25,) * c, name="idx")


def _epoch(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_deterministic_and_covering():
    ds = _indexed_dataset(100)
    mk = lambda **kw: TensorLoader(ds, 16, shuffle=True, drop_last=False, device="cpu", augment=Augment(2, True), seed=7, **kw)
    a, b = mk(), mk()
    assert len(a) == 7
    e0, e0b, e1 = _epoch(a, 0), _epoch(b, 0), _epoch(a, 1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(e0, e0b))
    order0 = torch.cat([y for _, y in e0])
    order1 = torch.cat([y for _, y in e1])
    assert sorted(order0.tolist()) == list(range(100)) and sorted(order1.tolist()) == list(range(100))
    assert not torch.equal(order0, order1)
    assert [len(y) for _, y in e0] == [16] * 6 + [4]
    # a different seed gives a different order; the same epoch replays exactly (no saved RNG)
    other = TensorLoader(ds, 16, shuffle=True, drop_last=False, device="cpu", augment=None, seed=8)
    assert not torch.equal(torch.cat([y for _, y in _epoch(other, 0)]), order0)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(_epoch(a, 0), e0))
    # mid-epoch resume reproduces the remaining batches, augmentation included
    resumed = _epoch(b, 0, start=3)
    assert len(resumed) == 4
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(resumed, e0[3:]))
    assert len(_epoch(b, 0)) == 7  # the offset applied to one pass only
    # drop_last and no shuffle
    c = TensorLoader(ds, 16, shuffle=False, drop_last=True, device="cpu", augment=None, seed=0)
    got = _epoch(c, 0)
    assert len(c) == len(got) == 6 and torch.equal(torch.cat([y for _, y in got]), torch.arange(96))


def test_loader_sharding():
    for n in (100, 101):
        ds = _indexed_dataset(n)
        shards = []
        for rank in range(2):
            ld = TensorLoader(ds, 8, shuffle=True, drop_last=False, device="cpu", augment=None, seed=3, rank=rank, world_size=2)
            shards.append(torch.cat([y for _, y in _epoch(ld, 2)]).tolist())
        assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
        assert set(shards[0]) | set(shards[1]) == set(range(n))
        overlap = set(shards[0]) & set(shards[1])
        assert len(overlap) == (n % 2)  # only the wrap-around padding repeats
        assert len(set(shards[0])) == len(shards[0])
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(ds, 8, shuffle=True, drop_last=False, device="cpu", augment=None, seed=0, rank=2, world_size=2)


def test_loader_normalisation_and_layout():
    ds = load_dataset("digits", split="test", channels=3)
    ld = TensorLoader(ds, 50, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0)
    x, y = next(iter(ld))
    m = torch.tensor(ds.mean).view(1, 3, 1, 1)
    s = torch.tensor(ds.std).view(1, 3, 1, 1)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, (ds.images[:50].float() / 255 - m) / s, atol=1e-6)
    assert torch.equal(y, ds.labels[:50])
    assert not x.is_contiguous(memory_format=torch.channels_last)
    cl = TensorLoader(ds, 50, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0, channels_last=True)
    xc, _ = next(iter(cl))
    assert xc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xc, x)
    half = TensorLoader(ds, 50, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0, dtype=torch.bfloat16)
    assert next(iter(half))[0].dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_and_augment_on_cuda():
    dev = torch.device("cuda")
    x = _batch(b=200).to(dev)
    g = torch.Generator(device=dev).manual_seed(1)
    out = random_crop(x, 2, g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    h, w = x.shape[2:]
    for i in range(0, 200, 7):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w]) for dy in range(5) for dx in range(5)
        )
    f = random_hflip(x, torch.Generator(device=dev).manual_seed(2))
    assert bool(((f == x.flip(3)).flatten(1).all(1) | (f == x).flatten(1).all(1)).all())
    ds = _indexed_dataset(100)
    ld = TensorLoader(ds, 16, shuffle=True, drop_last=False, device=dev, augment=Augment(2, True), seed=7, channels_last=True)
    assert ld.images.device.type == "cuda"
    e0, again = _epoch(ld, 0), _epoch(ld, 0)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e0, again))
    assert all(xb.device.type == "cuda" and xb.is_contiguous(memory_format=torch.channels_last) for xb, _ in e0)
    assert sorted(torch.cat([y for _, y in e0]).tolist()) == list(range(100))
    cpu = TensorLoader(ds, 16, shuffle=True, drop_last=False, device="cpu", augment=None, seed=7)
    assert torch.equal(torch.cat([y for _, y in _epoch(cpu, 0)]), torch.cat([y for _, y in e0]).cpu())
