"""`kdforge export --format torchscript|onnx`: the files reproduce the student, and their metadata describes it."""

import json
import shutil
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from test_ddnn import randomise_paths
from test_export import logged_epochs, run_cli, tiny_run

from kdforge.data import load_dataset, normalize
from kdforge.engine.checkpoint import FORMAT, atomic_save, load_checkpoint, load_model
from kdforge.deploy.export import export_model
from kdforge.deploy.formats import EMBEDDED_METADATA
from kdforge.deploy.metadata import metadata_path
from kdforge.errors import CheckpointError, ConfigError
from kdforge.models import build_model, count_macs, count_parameters

TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A few steps of resnet8 on digits: (run folder, summary)."""
    return tiny_run(tmp_path_factory.mktemp("formats"), "plain", {"model": "resnet8"}, {"ce": 1}, max_steps=6)


@pytest.fixture(scope="module")
def exports(run):
    """{format: export_model's result} for every format, at the default paths."""
    folder, _ = run
    return {fmt: export_model(folder, format=fmt) for fmt in ("state_dict", "torchscript", "onnx")}


@pytest.fixture(scope="module")
def images():
    """Nine normalised digits test images."""
    data = load_dataset("digits", None, "test")
    return normalize(data.images[:9], data.mean, data.std)


def onnx_logits(file, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOLERANCE * max(1.0, want.abs().max().item())


def test_torchscript_and_onnx_reproduce_the_student(run, exports, images):
    folder, _ = run
    model, _ = load_model(folder, "last")
    model.eval()
    with torch.no_grad():
        want = model(images)
    scripted = torch.jit.load(exports["torchscript"]["path"])
    assert not scripted.training
    with torch.no_grad():
        assert_close(scripted(images[:5]), want[:5])
    for n in (1, 5):  # the batch size is dynamic
        assert_close(onnx_logits(exports["onnx"]["path"], images[:n]), want[:n])
    assert exports["torchscript"]["checked_with"] == "torch.jit"
    assert exports["onnx"]["checked_with"] == "onnxruntime" and exports["onnx"]["max_abs_diff"] <= TOLERANCE
    assert exports["state_dict"]["checked_with"] == "torch" and exports["state_dict"]["max_abs_diff"] == 0.0
    assert {e["path"] for e in exports.values()} == {str(folder / "export" / name) for name in
                                                    ("resnet8.pt", "resnet8.torchscript.pt", "resnet8.onnx")}


def test_exports_run_in_eval_mode(exports, images):
    # BatchNorm on its running statistics: an image's logits do not depend on the rest of its batch
    scripted = torch.jit.load(exports["torchscript"]["path"])
    with torch.no_grad():
        alone, batched = scripted(images[:1]), scripted(images[:6])
    assert_close(alone, batched[:1])
    file = exports["onnx"]["path"]
    assert_close(onnx_logits(file, images[:1]), onnx_logits(file, images[:6])[:1])


def test_metadata_describes_the_export(run, exports):
    folder, summary = run
    ckpt = load_checkpoint(folder, "last")
    model, _ = load_model(folder, "last")
    for fmt, result in exports.items():
        file = metadata_path(result["path"])
        assert result["metadata"] == str(file) and file.name.endswith(".json")
        meta = json.loads(file.read_text())
        assert meta["kdforge_export"] == 1 and meta["format"] == fmt
        assert meta["file"] == result["path"].rsplit("/", 1)[-1]
        assert meta["architecture"] == "resnet8" and meta["options"] == {} and meta["num_classes"] == 10
        assert meta["classes"] == load_dataset("digits", None, "test").classes == ckpt["data"]["classes"]
        assert meta["in_channels"] == 1 and meta["image_size"] == 32 and meta["resize"] == "stretch"
        assert meta["normalization"] == {"mean": ckpt["data"]["mean"], "std": ckpt["data"]["std"], "pixel_scale": 255}
        assert "(N, 1, 32, 32)" in meta["input"]
        assert meta["accuracy"] == {"top1": summary["top1_last"], "which": "last", "split": "test", "dataset": "digits"}
        assert meta["params"] == count_parameters(model) == result["params"]
        assert meta["macs"] == count_macs(model, 32, 1) == result["macs"]
        assert meta["source"] == {"checkpoint": ckpt["path"], "which": "last", "subnet": None}
        assert meta["max_abs_diff"] == result["max_abs_diff"] and meta["checked_with"] == result["checked_with"]
    # the TorchScript file carries the same metadata, less the check's result
    extra = {EMBEDDED_METADATA: ""}
    torch.jit.load(exports["torchscript"]["path"], _extra_files=extra)
    embedded = json.loads(extra[EMBEDDED_METADATA])
    sidecar = json.loads(metadata_path(exports["torchscript"]["path"]).read_text())
    assert embedded == {k: v for k, v in sidecar.items() if k not in ("max_abs_diff", "checked_with")}


#: 100 training images per class, no augmentation: one epoch learns well above chance
LEARNS = {"few_shot": {"shots": 100, "holdout": 10, "labels": True}, "augment": {"crop_padding": 0, "hflip": False}}


def test_best_checkpoint_metadata_has_the_best_top1(tmp_path):
    # best.pt is not last.pt by construction, not by a lucky seed: epoch 1 learns (33% of the 100
    # hold-out images here), then epoch 2 runs at 100x the learning rate and wrecks the model (10%)
    folder, summary = tiny_run(tmp_path, "plain", {"model": "resnet8"}, {"ce": 1}, seed=2, lr=0.1, epochs=2,
                               data=LEARNS, schedule={"name": "multistep", "milestones": [1], "gamma": 100.0})
    top1 = [r["eval_top1"] for r in logged_epochs(folder)]
    assert len(top1) == 2 and top1[0] > top1[1]  # else the test could not fail
    best = load_checkpoint(folder, "best")
    assert best["path"].endswith("best.pt") and best["state"]["best_top1"] == max(top1) == summary["top1_best"]
    for which, want in (("best", max(top1)), ("last", top1[-1])):
        meta = json.loads(metadata_path(export_model(folder, which=which, format="torchscript",
                                                     out=tmp_path / f"{which}.torchscript.pt")["path"]).read_text())
        assert meta["accuracy"]["top1"] == want and meta["accuracy"]["which"] == which, which
        assert meta["source"]["which"] == which


def test_ddnn_subnet_exports_to_torchscript_and_onnx(tmp_path, images):
    net = build_model("ddnn", num_classes=10, in_channels=1, full="resnet20", subnets=["resnet8"], bn="switchable")
    randomise_paths(net)
    net.eval()
    atomic_save({"format": FORMAT, "model": net.zoo_record, "student": net.state_dict(), "state": {},
                 "config": {"data": {"name": "digits"}},
                 "data": {"name": "digits", "image_size": 32, "in_channels": 1}}, tmp_path / "c.pt")
    with torch.no_grad():
        want = net(images, "resnet8")
        assert not torch.allclose(want, net(images, "resnet20"))
    ts = export_model(tmp_path / "c.pt", subnet="resnet8", format="torchscript")
    onnx = export_model(tmp_path / "c.pt", subnet="resnet8", format="onnx")
    assert ts["path"] == str(tmp_path / "export" / "resnet8.torchscript.pt")
    with torch.no_grad():
        assert_close(torch.jit.load(ts["path"])(images), want)
    assert_close(onnx_logits(onnx["path"], images), want)
    meta = json.loads(metadata_path(onnx["path"]).read_text())
    assert meta["architecture"] == "resnet8" and meta["source"]["subnet"] == "resnet8"
    assert meta["params"] == count_parameters(build_model("resnet8", num_classes=10, in_channels=1))
    assert meta["accuracy"] is None and meta["classes"] is None  # the hand-made checkpoint records neither
    assert meta["source"]["which"] is None  # nor which checkpoint of a run it is


def test_netgraft_student_exports_folded(tmp_path, images):
    from test_netgraft import W

    net = build_model("grafted", num_classes=10, in_channels=1, teacher_options=W, student_options=W)
    with torch.no_grad():  # adapters that are not the identity: folding changes the rounding
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    net.eval()
    atomic_save({"format": FORMAT, "model": net.zoo_record, "student": net.state_dict(), "state": {},
                 "config": {"data": {"name": "digits"}},
                 "data": {"name": "digits", "image_size": 32, "in_channels": 1}}, tmp_path / "g.pt")
    with torch.no_grad():
        want = net(images)
    ts = export_model(tmp_path / "g.pt", format="torchscript")
    onnx = export_model(tmp_path / "g.pt", format="onnx")
    assert ts["model"] == onnx["model"] == "adapted"
    with torch.no_grad():
        assert_close(torch.jit.load(ts["path"])(images), want)
    assert_close(onnx_logits(onnx["path"], images), want)
    assert json.loads(metadata_path(onnx["path"]).read_text())["options"]["base"] == "vgg16_nobn_thin"


def test_cli_prints_one_line(run, tmp_path, capsys):
    folder, summary = run
    out = tmp_path / "student.ts"
    code, printed, err = run_cli(capsys, "export", folder, "--format", "torchscript", "--out", out)
    assert code == 0 and err == "" and len(printed.strip().splitlines()) == 1
    for needle in (str(out), "(torchscript)", f"{summary['params']:,} parameters", "in torch.jit",
                   f"metadata {out}.json"):
        assert needle in printed, printed
    assert out.is_file() and metadata_path(out).is_file()


def test_a_check_that_fails_removes_the_files(run, tmp_path, monkeypatch):
    import kdforge.deploy.export as export

    original = export.load_runner

    def off(path, fmt, need_runtime=True):
        runner, name = original(path, fmt, need_runtime=need_runtime)
        return (lambda x: runner(x) + 1e-2), name

    monkeypatch.setattr(export, "load_runner", off)
    with pytest.raises(CheckpointError, match="torchscript export of resnet8 .* does not reproduce its logits"):
        export_model(run[0], format="torchscript", out=tmp_path / "bad.torchscript.pt")
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_onnxruntime_is_validated_not_run(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    code, printed, _ = run_cli(capsys, "export", run[0], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0 and "validated by onnx.checker, not run (onnxruntime is not installed)" in printed
    meta = json.loads(metadata_path(tmp_path / "m.onnx").read_text())
    assert meta["checked_with"] == "onnx.checker" and meta["max_abs_diff"] is None
    code, printed, err = run_cli(capsys, "predict", tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert code == 2 and "needs onnxruntime" in err and "pip install 'kdforge[onnx]'" in err


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_onnx_without_the_extra_is_one_line(run, tmp_path, monkeypatch, capsys, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    code, printed, err = run_cli(capsys, "export", run[0], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 2 and printed == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("kdforge export: error: --format onnx needs the optional onnx extra")
    assert "pip install 'kdforge[onnx]'" in err and missing in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_refused(run, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(capsys, "export", run[0], "--format", "tflite")
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="format: one of state_dict, torchscript, onnx, got 'tflite'"):
        export_model(run[0], format="tflite")


def test_numpy_input_of_the_documented_shape(exports):
    """docs/deploy.md's onnxruntime snippet: a float32 array (N, C, H, W) in, (N, classes) logits out."""
    session = onnxruntime.InferenceSession(exports["onnx"]["path"], providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": np.zeros((2, 1, 32, 32), np.float32)})[0]
    assert logits.shape == (2, 10) and logits.dtype == np.float32


def folder_bytes(folder) -> dict:
    """{file name: bytes} of every file in `folder`, hidden ones included."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript", "onnx"])
def test_a_failed_export_keeps_the_earlier_one(run, tmp_path, monkeypatch, fmt):
    import kdforge.deploy.export as export

    out = tmp_path / f"m{'.onnx' if fmt == 'onnx' else '.pt'}"
    export_model(run[0], format=fmt, out=out)
    good = folder_bytes(tmp_path)
    assert set(good) == {out.name, out.name + ".json"}
    writer = {"state_dict": "atomic_save", "torchscript": "write_torchscript", "onnx": "write_onnx"}[fmt]

    def half_written(obj, example_or_path, path=None, *args, **kwargs):  # Ctrl-C after part of the file
        (path or example_or_path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, writer, half_written)
    with pytest.raises(KeyboardInterrupt):
        export_model(run[0], format=fmt, out=out)
    assert folder_bytes(tmp_path) == good
    monkeypatch.undo()

    original = export.load_runner  # a check that fails, after the whole file was written

    def off(path, fmt, need_runtime=True):
        runner, name = original(path, fmt, need_runtime=need_runtime)
        return (lambda x: runner(x) + 1e-2), name

    monkeypatch.setattr(export, "load_runner", off)
    with pytest.raises(CheckpointError, match="does not reproduce its logits"):
        export_model(run[0], format=fmt, out=out)
    assert folder_bytes(tmp_path) == good
    monkeypatch.undo()  # the staging file's name (with the process id) is in neither file
    export_model(run[0], format=fmt, out=out)
    again = folder_bytes(tmp_path)
    assert set(again) == set(good) and not any(b"staging" in data for data in again.values())
    if fmt != "torchscript":  # tracing again in one process renames TorchScript's classes (__torch_mangle_N)
        assert again == good


def test_a_failed_export_leaves_no_folder_behind(run, tmp_path, monkeypatch):
    import kdforge.deploy.export as export

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run[0] / "checkpoints" / "last.pt", lone / "m.pt")
    def interrupted(model, example, path, metadata):  # Ctrl-C while tracing, after the writer made the folder
        path.parent.mkdir(parents=True, exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_torchscript", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(lone / "m.pt", format="torchscript")  # to lone/export/resnet8.torchscript.pt
    with pytest.raises(KeyboardInterrupt):
        export_model(lone / "m.pt", format="torchscript", out=tmp_path / "a" / "b" / "m.ts")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["lone", "m.pt"]
    (tmp_path / "a").mkdir()  # a folder that was there before stays
    with pytest.raises(KeyboardInterrupt):
        export_model(lone / "m.pt", format="torchscript", out=tmp_path / "a" / "b" / "m.ts")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "lone", "m.pt"]
    monkeypatch.undo()
    result = export_model(lone / "m.pt", format="torchscript")
    assert result["path"] == str(lone / "export" / "resnet8.torchscript.pt")
    assert sorted(p.name for p in (lone / "export").iterdir()) == ["resnet8.torchscript.pt",
                                                                  "resnet8.torchscript.pt.json"]


def test_first_line():
    from kdforge.engine.checkpoint import first_line

    assert first_line(ValueError("  first line \nsecond line"), 100) == "first line"
    assert first_line(ValueError("abcdef\nxyz"), 4) == "abcd"
    assert first_line(ValueError(""), 10) == first_line(ValueError("  \n "), 10) == ""


def test_error_messages_keep_the_first_line_of_the_cause(run, tmp_path, monkeypatch):
    import kdforge.engine.checkpoint as checkpoint
    import kdforge.deploy.formats as formats

    long = "x" * 400

    def fail(*args, **kwargs):
        raise RuntimeError(f"  {long}\nthe second line")

    with pytest.raises(CheckpointError) as caught:  # a file that does not load
        formats._read(tmp_path / "f", "an ONNX model", fail)
    assert str(caught.value).endswith(f"RuntimeError: {'x' * 200}")
    monkeypatch.setattr(torch.onnx, "export", fail)  # an exporter error: the destination is named, not the staging file
    with pytest.raises(CheckpointError) as caught:
        export_model(run[0], format="onnx", out=tmp_path / "m.onnx")
    assert str(caught.value).startswith(f"{tmp_path / 'm.onnx'}: the model cannot be exported to ONNX: "
                                        f"RuntimeError: {'x' * 300} (--debug")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: (_ for _ in ()).throw(
        ValueError("Weights only load failed. In PyTorch 2.6, ...\nmore")))
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"code objects\): ValueError: Weights only load failed$"):
        load_checkpoint(tmp_path / "c.pt")
