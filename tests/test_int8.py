"""`kdforge export RUN --format onnx --int8`: post-training int8 quantisation (QDQ) of a trained student, its
activations calibrated on training images only, checked against the fp32 model, and run by `kdforge predict`."""

import json

import onnx
import pytest
import torch
from test_export import tiny_run

from kdforge.cli import main
from kdforge.deploy.export import export_model
from kdforge.deploy.predict import load_deployed


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """resnet8 on digits for 3 epochs (about 90 % top-1): a model whose predictions mean something."""
    root = tmp_path_factory.mktemp("int8")
    return tiny_run(root, "student", {"model": "resnet8"}, {"ce": 1.0}, epochs=3, lr=0.05,
                    schedule={"name": "cosine"})


@pytest.fixture(scope="module")
def quantized(trained, tmp_path_factory):
    import kdforge.data as data_package

    loaded, original = [], data_package.load_dataset

    def recording(name, root, split, **options):  # every split the export reads
        loaded.append(split)
        return original(name, root, split, **options)

    data_package.load_dataset = recording
    try:
        result = export_model(trained[0], format="onnx", int8=True, calibrate=128,
                              out=tmp_path_factory.mktemp("int8_out") / "student.int8.onnx")
    finally:
        data_package.load_dataset = original
    return result, loaded


def test_the_file_is_int8_qdq_and_agrees_with_the_fp32_model(quantized):
    result, _ = quantized
    graph = onnx.load(result["path"]).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 9  # every conv's weights (resnet8: 9 convs and the classifier)
    check = result["int8_check"]
    assert check["top1_agreement"] >= 0.9 and 0 < check["max_abs_diff"] < 5
    meta = json.loads(open(result["metadata"]).read())
    assert meta["int8"]["format"] == "QDQ" and meta["int8"]["calibration"] == {"images": 128, "split": "train",
                                                                              "seed": 0}
    assert meta["int8"]["check"]["top1_agreement"] == check["top1_agreement"]


def test_calibration_reads_the_training_split_only(quantized):
    _, loaded = quantized
    assert loaded and set(loaded) == {"train"}


def test_predict_and_eval_of_the_int8_file(quantized, trained, tmp_path, capsys):
    from PIL import Image

    result, _ = quantized
    deployed = load_deployed(result["path"])
    image = tmp_path / "digit.png"
    Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy()).save(image)
    assert main(["predict", result["path"], str(image)]) == 0
    assert "digit.png" in capsys.readouterr().out
    assert deployed is not None


@pytest.mark.parametrize("args, message", [
    (["--format", "torchscript", "--int8"], "--int8 writes an ONNX model"),
    (["--format", "onnx", "--int8", "--calibrate", "0"], "--calibrate"),
])
def test_bad_int8_arguments_are_one_line(trained, tmp_path, capsys, args, message):
    assert main(["export", str(trained[0]), "--out", str(tmp_path / "x.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_eval_runs_exported_files_as_deployed(quantized, trained, tmp_path):
    from kdforge.deploy.evaluate_file import evaluate_file
    from kdforge.engine.evaluate_checkpoint import evaluate_checkpoint

    result, _ = quantized
    fp32 = export_model(trained[0], format="onnx", out=tmp_path / "student.onnx")
    reference = evaluate_checkpoint(trained[0], "last", split="test")
    onnx_fp32 = evaluate_file(fp32["path"])
    assert (onnx_fp32["dataset"], onnx_fp32["split"], onnx_fp32["n"]) == ("digits", "test", reference["n"])
    assert abs(onnx_fp32["top1"] - reference["top1"]) <= 100 / reference["n"]  # at most one image flips
    int8 = evaluate_file(result["path"])
    assert int8["int8"] and not onnx_fp32["int8"] and abs(int8["top1"] - reference["top1"]) < 5


def test_speed_benchmark_times_both_files(trained, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("int8_speed", Path(__file__).parent.parent / "benchmarks" /
                                                  "int8_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(trained[0]), "--repeats", "2"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if str(trained[0]) in line]
    assert [r[1].strip() for r in rows] == ["fp32", "int8"]
    assert float(rows[1][2]) < float(rows[0][2])  # the int8 file is smaller
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)


def test_one_command_shows_the_int8_file_beside_the_fp32_one(trained, tmp_path, capsys):
    """`kdforge export --int8` writes both files and prints each one's top-1 (as `kdforge eval FILE` measures it),
    size and speed."""
    from kdforge.deploy.evaluate_file import evaluate_file

    out = tmp_path / "r8.int8.onnx"
    assert main(["export", str(trained[0]), "--format", "onnx", "--int8", "--calibrate", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    rows = {line.split("|")[1].strip().split(":")[0]: line.split("|") for line in text.splitlines()
            if line.startswith("| fp32:") or line.startswith("| int8:")}
    assert set(rows) == {"fp32", "int8"} and (tmp_path / "r8.onnx").is_file()
    for kind, path in (("fp32", tmp_path / "r8.onnx"), ("int8", out)):
        assert float(rows[kind][3]) == pytest.approx(evaluate_file(path)["top1"], abs=0.005)
        assert float(rows[kind][2]) == pytest.approx(path.stat().st_size / 1024, abs=0.5)
        assert float(rows[kind][4]) > 0 and float(rows[kind][5]) > 0
    assert "agrees with the fp32 model on held training images" in text
