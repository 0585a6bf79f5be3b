"""Tests for the IDX loaders (fashion_mnist, mnist, kmnist): files written here in the official format
load to exactly the arrays written; every malformed or missing file is one line naming it."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdforge.data import DataError, load_dataset
from kdforge.data.datasets import idx

RNG = np.random.default_rng(20)
FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGES_EXPECTED = "an IDX image file: big-endian int32 magic 2051, N, 28, 28, then N*28*28 uint8 pixels"
LABELS_EXPECTED = "an IDX label file: big-endian int32 magic 2049, N, then N uint8 labels 0..9"


def how_to(name: str, folder) -> str:
    """The end of every message: how to get the files, and the folder they belong in."""
    tail = f"the official files ({FILES}, raw or .gz) from {{url}} into {folder}."
    if name == "fashion_mnist":
        return ("Run `make data` or `apt-get install -y dataset-fashion-mnist` (Debian: files in "
                "/usr/share/datasets/fashion-mnist), or download "
                + tail.format(url="https://github.com/zalandoresearch/fashion-mnist"))
    url = {"mnist": "http://yann.lecun.com/exdb/mnist/", "kmnist": "https://github.com/rois-codh/kmnist (MNIST format)"}
    return "Download " + tail.format(url=url[name])


# --------------------------------------------------------------------------- the official format, written by hand


def idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    """IDX: big-endian int32 magic, one big-endian int32 per dimension, then the uint8 values row-major."""
    return struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in arr.shape) + arr.astype(np.uint8).tobytes()


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, data in ((f"{prefix}-images-idx3-ubyte", idx_bytes(images, 2051)),
                       (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049))):
        if gz:
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(data)
        else:
            (folder / stem).write_bytes(data)


def make_set(folder: Path, gz: bool, n_train: int = 7, n_test: int = 5) -> dict:
    written = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, size=n, dtype=np.uint8)
        write_split(folder, prefix, x, y, gz)
        written[split] = (x, y)
    return written


def padded(x: np.ndarray) -> np.ndarray:
    """(n, 28, 28) -> (n, 1, 32, 32): the image at rows/columns 2..29, zeros around it."""
    out = np.zeros((x.shape[0], 1, 32, 32), np.uint8)
    for i in range(x.shape[0]):
        for r in range(28):
            out[i, 0, r + 2, 2:30] = x[i, r]
    return out


def error(name, root, split="train", **kw) -> DataError:
    with pytest.raises(DataError) as ei:
        load_dataset(name, root, split, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{name}: ")
    return ei.value


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize(
    "name, classes, mean, std",
    [
        ("fashion_mnist", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                           "Bag", "Ankle boot"], 0.2860406, 0.3530242),
        ("mnist", [str(i) for i in range(10)], 0.1307, 0.3081),
        ("kmnist", ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"], 0.1918, 0.3483),
    ],
    ids=["fashion_mnist", "mnist", "kmnist"],
)
def test_gz_and_raw_load_the_written_arrays(tmp_path, name, classes, mean, std):
    written = make_set(tmp_path / "gz", gz=True)
    raw_dir = tmp_path / "raw"
    for split, prefix in (("train", "train"), ("test", "t10k")):
        write_split(raw_dir, prefix, *written[split], gz=False)
    for split in ("train", "test"):
        x, y = written[split]
        a = load_dataset(name, tmp_path / "gz", split)
        b = load_dataset(name, raw_dir, split)
        for ds in (a, b):
            assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(y), 1, 32, 32)
            assert np.array_equal(ds.images.numpy(), padded(x))
            assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == y.tolist()
            assert ds.classes == classes and ds.mean == (mean,) and ds.std == (std,) and ds.name == name
        # by hand: pixel (r, c) lands at (r + 2, c + 2); the 2-pixel frame is zero
        assert int(a.images[1, 0, 2, 2]) == int(x[1, 0, 0]) and int(a.images[2, 0, 29, 31 - 2]) == int(x[2, 27, 27])
        assert int(a.images[:, :, :2].sum() + a.images[:, :, 30:].sum() + a.images[..., :2].sum()
                   + a.images[..., 30:].sum()) == 0
        native = load_dataset(name, raw_dir, split, image_size=28)
        assert native.images.shape == (len(y), 1, 28, 28) and native.images.is_contiguous()
        assert np.array_equal(native.images.numpy(), x[:, None]) and native.labels.tolist() == y.tolist()
        assert native.images.numpy().flags.writeable


def test_sub_folders_and_raw_preferred(tmp_path):
    written = make_set(tmp_path / "fashion-mnist", gz=False)
    assert load_dataset("fashion-mnist", tmp_path, "test").labels.tolist() == written["test"][1].tolist()
    written = make_set(tmp_path / "MNIST" / "raw", gz=False)
    assert np.array_equal(load_dataset("mnist", tmp_path, "train", image_size=28).images.numpy()[:, 0],
                          written["train"][0])
    # raw and .gz side by side: the raw file is read (here the .gz is damaged)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    assert len(load_dataset("mnist", tmp_path, "test")) == 5


def test_image_size_option(tmp_path):
    make_set(tmp_path, gz=False)
    for bad in (30, 32.0, True, "28", None):
        with pytest.raises(ValueError) as ei:
            load_dataset("kmnist", tmp_path, "train", image_size=bad)
        assert str(ei.value) == (
            f"kmnist: image_size must be 32 (28x28 zero-padded by 2 on each side) or 28 (native), got {bad!r}"
        )
    with pytest.raises(TypeError, match="its options: image_size"):
        load_dataset("kmnist", tmp_path, "train", size=28)


# --------------------------------------------------------------------------- malformed and missing files


def test_wrong_magic(tmp_path):
    make_set(tmp_path, gz=False)
    x = np.zeros((7, 28, 28), np.uint8)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(x, 2049))  # a label file's magic
    e = error("fashion_mnist", tmp_path)
    assert str(e) == (f"fashion_mnist: '{path}' has magic number 2049 (that of a label file), expected 2051: "
                      f"not an official IDX file of this kind. Expected {IMAGES_EXPECTED}. "
                      + how_to("fashion_mnist", tmp_path))
    assert e.path == str(path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x12\x34\x56\x78" + labels.read_bytes()[4:])
    assert str(error("mnist", tmp_path, "test")) == (
        f"mnist: '{labels}' has magic number 305419896, expected 2049: not an official IDX file of this kind. "
        f"Expected {LABELS_EXPECTED}. " + how_to("mnist", tmp_path))


def test_truncated_files(tmp_path):
    make_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    whole = path.read_bytes()
    assert len(whole) == 16 + 7 * 28 * 28
    path.write_bytes(whole[:-100])
    e = error("kmnist", tmp_path)
    assert str(e) == (f"kmnist: '{path}' is {len(whole) - 100} bytes but its header (7, 28, 28) needs {len(whole)}: "
                      f"it is truncated. Expected {IMAGES_EXPECTED}. " + how_to("kmnist", tmp_path))
    assert e.path == str(path)
    path.write_bytes(whole + b"abc")
    assert f"is {len(whole) + 3} bytes but its header (7, 28, 28) needs {len(whole)}: 3 bytes follow the data." in str(
        error("kmnist", tmp_path))
    path.write_bytes(whole[:10])
    assert str(error("kmnist", tmp_path)).startswith(
        f"kmnist: '{path}' is 10 bytes, shorter than the 16-byte IDX header: the file is truncated. ")
    # a cut .gz file
    g = tmp_path / "g"
    make_set(g, gz=True)
    gz = g / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-9])
    msg = str(error("mnist", g, "test"))
    assert msg.startswith(f"mnist: cannot read '{gz}' (EOFError: ") and "the file may be truncated" in msg
    assert msg.endswith(f"Expected {LABELS_EXPECTED}. " + how_to("mnist", g))


def test_count_mismatch_dimensions_and_labels(tmp_path):
    make_set(tmp_path, gz=True)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(labels, "wb") as f:
        f.write(idx_bytes(np.zeros(6, np.uint8), 2049))
    assert str(error("fashion_mnist", tmp_path)) == (
        f"fashion_mnist: '{images}' holds 7 images but '{labels}' holds 6 labels; the two files must be of "
        f"the same split. " + how_to("fashion_mnist", tmp_path))
    with gzip.open(labels, "wb") as f:
        f.write(idx_bytes(np.array([0, 1, 2, 10, 3, 4, 5], np.uint8), 2049))
    assert str(error("fashion_mnist", tmp_path)).startswith(
        f"fashion_mnist: label 10 in '{labels}' is out of range [0, 10) (labels span [0, 10]). ")
    with gzip.open(images, "wb") as f:
        f.write(idx_bytes(np.zeros((2, 27, 28), np.uint8), 2051))
    assert str(error("fashion_mnist", tmp_path)).startswith(
        f"fashion_mnist: '{images}' has header dimensions (2, 27, 28), expected ('N', 28, 28). ")


def test_missing_file_and_folder(tmp_path):
    make_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert len(load_dataset("mnist", tmp_path, "train")) == 7  # the train split does not need it
    e = error("mnist", tmp_path, "test")
    missing = tmp_path / "t10k-labels-idx1-ubyte"
    assert str(e) == (f"mnist: missing file '{missing}' (or t10k-labels-idx1-ubyte.gz); expected {LABELS_EXPECTED}. "
                      + how_to("mnist", tmp_path))
    assert e.path == str(missing)
    assert str(error("kmnist", tmp_path / "nowhere")) == (
        f"kmnist: data folder '{tmp_path / 'nowhere'}' does not exist. " + how_to("kmnist", tmp_path / "nowhere"))
    a_file = tmp_path / "t10k-images-idx3-ubyte.gz"
    assert str(error("kmnist", a_file)) == (
        f"kmnist: data folder '{a_file}' is a file, not a folder. " + how_to("kmnist", a_file))
    empty = tmp_path / "empty"
    empty.mkdir()
    looked = ", ".join(repr(str(empty / f)) for f in ("kmnist", "KMNIST", "KMNIST/raw")) + f", '{empty}'"
    assert str(error("kmnist", empty)) == (
        f"kmnist: no IDX files found (looked in {looked}). " + how_to("kmnist", empty))


def test_default_fashion_mnist_folder(tmp_path, monkeypatch):
    assert idx.FASHION_MNIST_SYSTEM_DIR == SYSTEM_DIR  # where the Debian package puts the files
    system, data_root = tmp_path / "system", tmp_path / "data"
    data_root.mkdir()
    monkeypatch.setattr(idx, "FASHION_MNIST_SYSTEM_DIR", system)
    monkeypatch.setenv("KDFORGE_DATA_ROOT", str(data_root))
    looked = ", ".join(repr(str(data_root / f)) for f in ("fashion-mnist", "fashion_mnist", "FashionMNIST",
                                                          "FashionMNIST/raw"))
    assert str(error("fashion_mnist", None)) == (
        f"fashion_mnist: no IDX files found (looked in {looked}, '{data_root}', '{system / 'fashion-mnist'}', "
        f"'{system / 'fashion_mnist'}', '{system / 'FashionMNIST'}', '{system / 'FashionMNIST/raw'}', '{system}'). "
        + how_to("fashion_mnist", data_root))
    written = make_set(system, gz=True)
    ds = load_dataset("fashion_mnist", None, "test")
    assert np.array_equal(ds.images.numpy(), padded(written["test"][0]))
    assert ds.labels.tolist() == written["test"][1].tolist()
    error("mnist", None)  # only fashion_mnist looks there
    error("fashion_mnist", data_root)  # and only when no root is given
    # files under the data root come first
    mine = make_set(data_root / "fashion-mnist", gz=False, n_test=3)
    assert load_dataset("fashion_mnist", None, "test").labels.tolist() == mine["test"][1].tolist()


# --------------------------------------------------------------------------- the real files (Debian package)


def _need_real_files():
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    if not all((SYSTEM_DIR / n).is_file() for n in names):
        pytest.skip(f"Fashion-MNIST files absent from {SYSTEM_DIR}: run `make data` "
                    "(apt-get install -y dataset-fashion-mnist)")


def test_real_fashion_mnist_test_split():
    _need_real_files()
    ds = load_dataset("fashion_mnist", SYSTEM_DIR, "test")
    assert ds.images.shape == (10_000, 1, 32, 32) and len(ds) == 10_000
    assert ds.class_counts().tolist() == [1000] * 10
    native = load_dataset("fashion_mnist", SYSTEM_DIR, "test", image_size=28)
    assert torch.equal(ds.images[:, :, 2:30, 2:30], native.images) and torch.equal(ds.labels, native.labels)
    assert int(ds.images.sum()) == int(native.images.sum())  # the frame adds nothing
    # the hard-coded training statistics are close to the test split's (published 0.2868 / 0.3524)
    x = native.images.double() / 255
    assert abs(float(x.mean()) - 0.2860406) < 0.005 and abs(float(x.std()) - 0.3530242) < 0.005


def test_real_fashion_mnist_training_statistics():
    """The hard-coded mean/std are those of the official training file's 28x28 pixels (read here without
    the loader)."""
    _need_real_files()
    with gzip.open(SYSTEM_DIR / "train-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    assert struct.unpack(">4i", raw[:16]) == (2051, 60_000, 28, 28)
    pixels = torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).copy())
    counts = torch.bincount(pixels, minlength=256).double().numpy()  # how often each value 0..255 occurs
    assert counts.sum() == 60_000 * 28 * 28
    v = np.arange(256) / 255
    mean = (counts * v).sum() / counts.sum()
    std = np.sqrt((counts * (v - mean) ** 2).sum() / counts.sum())
    assert abs(mean - idx.FASHION_MNIST_MEAN[0]) < 1e-6 and abs(std - idx.FASHION_MNIST_STD[0]) < 1e-6
