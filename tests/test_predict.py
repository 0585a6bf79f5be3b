"""`kdforge predict`: image files through an exported student, as the PyTorch model classifies them."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import run_cli, tiny_run

from kdforge.data import load_dataset, normalize
from kdforge.engine.checkpoint import load_model
from kdforge.deploy.export import export_model
from kdforge.deploy.predict import load_deployed, predict

TOLERANCE = 1e-4
FORMATS = ("state_dict", "torchscript", "onnx")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, {format: exported file}) of a few steps of resnet8 on digits."""
    folder, _ = tiny_run(tmp_path_factory.mktemp("predict"), "plain", {"model": "resnet8"}, {"ce": 1}, max_steps=12)
    return folder, {fmt: export_model(folder, format=fmt)["path"] for fmt in FORMATS}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None, "test")


@pytest.fixture(scope="module")
def reference(run, digits):
    """`reference(uint8 images (N, 1, 32, 32))`: the PyTorch student's class probabilities."""
    model, _ = load_model(run[0], "last")
    model.eval()

    def probs(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(normalize(images, digits.mean, digits.std)), dim=1)
    return probs


def save(array: np.ndarray, path, mode: str = "L", **kwargs):
    Image.fromarray(array).convert(mode).save(path, **kwargs)
    return path


def assert_top(result, want: torch.Tensor, k: int = 5) -> None:
    """`result` (one image's [(index, name, p)]) is the top-k of the probabilities `want` (ties in any order)."""
    assert len(result) == k
    values = torch.tensor([p for _, _, p in result])
    assert torch.allclose(values, want.topk(k).values, atol=TOLERANCE, rtol=0)
    for index, name, p in result:
        assert name == str(index) and abs(p - want[index].item()) <= TOLERANCE


@pytest.mark.parametrize("fmt", FORMATS)
def test_png_is_classified_as_the_pytorch_model_does(run, digits, reference, tmp_path, capsys, fmt):
    image = digits.images[3]
    png = save(image[0].numpy(), tmp_path / "three.png")
    code, out, err = run_cli(capsys, "predict", run[1][fmt], png)
    assert code == 0 and err == ""
    want = reference(image[None])[0]
    (path, top), = predict(load_deployed(run[1][fmt]), [png])
    assert path == str(png)
    assert_top(top, want)
    line, = out.strip().splitlines()
    assert line.startswith(f"{png}: {top[0][1]} (") and line.count("%)") == 5


def test_jpeg_and_rgb_images_for_a_grey_model(run, digits, reference, tmp_path):
    model = load_deployed(run[1]["onnx"])
    grey = digits.images[5, 0].numpy()
    rgb = save(grey, tmp_path / "rgb.png", "RGB")  # converted back to grey: the same pixels
    jpeg = save(grey, tmp_path / "digit.jpg", quality=90)
    with Image.open(jpeg) as im:  # what the JPEG decodes to, independently of kdforge
        decoded = torch.from_numpy(np.asarray(im.convert("L")).copy())
    (_, from_rgb), (_, from_jpeg) = predict(model, [rgb, jpeg])
    assert_top(from_rgb, reference(digits.images[5][None])[0])
    assert_top(from_jpeg, reference(decoded[None, None])[0])


def test_other_sizes_are_resized_as_the_image_folders_are(run, digits, reference, tmp_path):
    big = Image.fromarray(digits.images[7, 0].numpy()).resize((48, 40), Image.Resampling.NEAREST)
    big.save(tmp_path / "big.png")
    resized = torch.from_numpy(np.asarray(big.resize((32, 32), Image.Resampling.BILINEAR)).copy())
    (_, top), = predict(load_deployed(run[1]["torchscript"]), [tmp_path / "big.png"])
    assert_top(top, reference(resized[None, None])[0])


def test_a_folder_predicts_its_images_and_skips_other_files(run, digits, reference, tmp_path, capsys):
    for i in (1, 0):
        save(digits.images[i, 0].numpy(), tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    save(digits.images[2, 0].numpy(), tmp_path / "sub" / "nested.png")  # not recursive
    code, out, err = run_cli(capsys, "predict", run[1]["state_dict"], tmp_path, "--top", "3", "--batch-size", "1")
    assert code == 0 and "skipped 1 file(s)" in err
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    assert all(line.count("%)") == 3 for line in lines)


def test_top_k_is_clamped_and_a_run_folder_is_a_model(run, digits, reference, tmp_path, capsys):
    png = save(digits.images[0, 0].numpy(), tmp_path / "zero.png")
    (_, top), = predict(load_deployed(run[0]), [png], top=50)  # the run's last.pt, its data settings
    assert_top(top, reference(digits.images[0][None])[0], k=10)
    assert abs(sum(p for _, _, p in top) - 1) < 1e-5
    code, out, _ = run_cli(capsys, "predict", run[0] / "checkpoints" / "last.pt", png, "--top", "12")
    assert code == 0 and out.count("%)") == 10


def test_torchscript_without_its_json_uses_the_embedded_metadata(run, digits, reference, tmp_path):
    moved = shutil.copy(run[1]["torchscript"], tmp_path / "model.pt")  # any name: recognised as TorchScript
    png = save(digits.images[4, 0].numpy(), tmp_path / "four.png")
    model = load_deployed(moved)
    assert model.format == "torchscript"
    (_, top), = predict(model, [png])
    assert_top(top, reference(digits.images[4][None])[0])


def test_bad_input_is_one_line(run, digits, tmp_path, capsys):
    png = save(digits.images[0, 0].numpy(), tmp_path / "ok.png")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    orphan = shutil.copy(run[1]["onnx"], tmp_path / "orphan.onnx")
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage")
    shutil.copy(f"{run[1]['onnx']}.json", f"{damaged}.json")
    model = run[1]["onnx"]
    cases = [
        ((model, tmp_path / "missing.png"), [f"{tmp_path / 'missing.png'} does not exist"]),
        ((model, tmp_path / "texts"), [f"folder {tmp_path / 'texts'} has no image files", "1 other file)"]),
        ((model, tmp_path / "notes.txt"), [f"cannot read image '{tmp_path / 'notes.txt'}'"]),
        ((model, tmp_path / "broken.png"), [f"cannot read image '{tmp_path / 'broken.png'}'"]),
        ((orphan, png), [f"{orphan} has no metadata: expected {orphan}.json"]),
        ((tmp_path / "no-model.onnx", png), [f"model {tmp_path / 'no-model.onnx'} does not exist"]),
        ((damaged, png), [f"{damaged} cannot be read as an ONNX model"]),
        ((model, png, "--top", "0"), ["--top and --batch-size must be at least 1"]),
    ]
    for argv, needles in cases:
        code, out, err = run_cli(capsys, "predict", *argv)
        assert code == 2 and out == "", argv
        assert len(err.strip().splitlines()) == 1 and err.startswith("kdforge predict: error: "), err
        for needle in needles:
            assert needle in err, (argv, err)
