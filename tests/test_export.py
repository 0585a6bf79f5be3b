"""`kdforge export`: a ddnn run's sub-nets and a plain run's model as stand-alone zoo checkpoints."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.data import load_dataset
from kdforge.data.augment import normalize
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import FORMAT, atomic_save, load_checkpoint, load_model
from kdforge.deploy.export import export_model
from kdforge.errors import CheckpointError, ConfigError
from kdforge.models import build_model
from kdforge.models.dynamic import DepthDynamicNet

BN_MODES = DepthDynamicNet.BN_MODES
SUBNETS = ["resnet14", "resnet8"]


#: 20 training images per class, evaluated (and best.pt chosen) on 10 more per class: an evaluation per epoch, fast
FEW_SHOT = {"few_shot": {"shots": 20, "holdout": 10, "labels": True}}


def tiny_run(root: Path, name: str, student: dict, losses: dict, *, seed: int = 0, lr: float = 0.1,
             epochs: int = 1, data: dict | None = None, schedule: dict | None = None,
             **train) -> tuple[Path, dict]:
    """A few steps of a digits run through the real engine, on the CPU in fp32; (run folder, summary)."""
    cfg = config_from_dict({
        "name": name, "seed": seed, "output_dir": str(root), "student": student, "losses": losses,
        "data": {"batch_size": 32, "eval_batch_size": 128, **(data or {})},
        "optim": {"lr": lr}, "schedule": {"name": "constant", **(schedule or {}), "epochs": epochs},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", **train},
    })
    return root / name, train_from_config(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{bn mode: ddnn run, 'plain': resnet8 run}, each (folder, summary)."""
    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for bn in BN_MODES:
        options = {"full": "resnet20", "subnets": SUBNETS, "bn": bn}
        if bn == "recalibrate":  # statistics are recomputed after the last epoch: train one whole epoch
            options["recalibrate_batches"] = 2
            train = {"max_steps": None}
        else:
            train = {"max_steps": 8}
        out[bn] = tiny_run(root, f"ddnn-{bn}", {"model": "ddnn", "options": options}, {"ekd": 1}, **train)
    out["plain"] = tiny_run(root, "plain", {"model": "resnet8"}, {"ce": 1}, max_steps=6)
    return out


@pytest.fixture(scope="module")
def ddnn_epochs(tmp_path_factory):
    """A 3-epoch few-shot ddnn run (resnet14 with resnet8) whose paths score differently: (folder, summary).

    On 100 hold-out images the two paths can tie by chance, and whether they do depends on the CPU's
    kernels and thread count; the first seed whose paths differ at the end and at their best is used."""
    options = {"full": "resnet14", "subnets": ["resnet8"], "bn": "switchable"}
    for seed in range(1, 6):
        run, summary = tiny_run(tmp_path_factory.mktemp(f"ddnn_epochs{seed}"), "ddnn",
                                {"model": "ddnn", "options": options}, {"ekd": 1}, seed=seed, lr=0.05, epochs=3,
                                data=FEW_SHOT)
        epochs = logged_epochs(run)
        full, path = [r["eval_top1"] for r in epochs], [r["eval_top1/ekd/resnet8"] for r in epochs]
        if path[-1] != full[-1] and max(path) != max(full):
            return run, summary
    raise AssertionError("five seeds of a 3-epoch ddnn run gave paths of equal top-1: they do not train apart")


def logged_epochs(run: Path) -> list[dict]:
    """The run's epoch records, as its log.jsonl has them."""
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def test_images():
    data = load_dataset("digits", None, "test")
    return normalize(data.images[:64], data.mean, data.std)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("bn", BN_MODES)
def test_every_subnet_exports_as_its_plain_model(runs, bn, test_images, tmp_path):
    run, summary = runs[bn]
    net, ckpt = load_model(run, "last")
    assert isinstance(net, DepthDynamicNet) and net.bn_mode == bn
    assert net.names == ["resnet20", *SUBNETS]
    net.eval()
    logits = {}
    for name in net.names:
        result = export_model(run, subnet=name, out=tmp_path / f"{name}.pt")
        assert result["model"] == name and result["max_abs_diff"] == 0.0
        assert result["params"] == summary["paths"][name]["params"]
        assert result["macs"] == summary["paths"][name]["macs"]
        saved = torch.load(result["path"], weights_only=True)
        assert saved["format"] == FORMAT
        assert saved["model"] == {"name": name, "num_classes": 10, "in_channels": 1, "options": {}}
        assert saved["exported_from"] == {"checkpoint": ckpt["path"], "which": "last", "subnet": name}
        assert saved["config"] == ckpt["config"] and saved["data"] == ckpt["data"]
        assert "optimizer" not in saved
        # checked here on real images, independently of the export's own check on a random batch
        plain = build_model(name, num_classes=10, in_channels=1)
        plain.load_state_dict(saved["student"])  # strict: exactly the plain layout
        plain.eval()
        with torch.no_grad():
            logits[name] = net(test_images, name)
            assert torch.equal(plain(test_images), logits[name]), name
    assert not torch.equal(logits["resnet14"], logits["resnet8"])  # the paths really differ
    # the sub-net's own BatchNorm went out: a layer after stage 1 that both resnet20 and resnet8 use
    key = "layer2.0.bn1.running_mean"
    full_bn = torch.load(tmp_path / "resnet20.pt", weights_only=True)["student"][key]
    sub_bn = torch.load(tmp_path / "resnet8.pt", weights_only=True)["student"][key]
    assert torch.equal(full_bn, sub_bn) == (bn == "shared")


@pytest.mark.parametrize("bn", BN_MODES)
def test_eval_of_the_export_gives_the_runs_top1(runs, bn, tmp_path, capsys):
    run, summary = runs[bn]
    # `kdforge eval` with the run's own device, precision and evaluation batch size: then every image
    # sees the same arithmetic as in the run's last evaluation (the exported logits equal the path's
    # bit for bit), so the top-1 must be equal, not merely close. A run trained in bf16 would need
    # --precision bf16 here, or a tolerance of about one image.
    assert summary["precision"] == "fp32" and summary["device"] == "cpu"
    for name in [*SUBNETS, "resnet20"]:
        file = tmp_path / f"{name}.pt"
        export_model(run, subnet=name, out=file)
        code, out, _ = run_cli(capsys, "eval", file, "--json", "--device", summary["device"],
                               "--precision", summary["precision"], "--batch-size", 128)
        assert code == 0
        metrics = json.loads(out)
        assert metrics["split"] == summary["selection_split"] == "test"
        assert metrics["top1"] == summary["paths"][name]["top1_last"], name


def test_cli_export_default_path_and_report(runs, capsys):
    run, summary = runs["switchable"]
    code, out, err = run_cli(capsys, "export", run, "--subnet", "resnet14")
    assert code == 0 and err == ""
    assert len(out.strip().splitlines()) == 1
    file = run / "export" / "resnet14.pt"
    assert str(file) in out and "resnet14" in out and "checked equal" in out
    assert f"{summary['paths']['resnet14']['params']:,}" in out
    # the export is an ordinary zoo checkpoint: usable as a teacher or a student's starting point
    model, ckpt = load_model(file)
    assert type(model).__name__ == "ResNet" and ckpt["model"]["name"] == "resnet14"
    # a checkpoint file inside a run's checkpoints/ folder exports to the same <run>/export/
    result = export_model(run / "checkpoints" / "last.pt", subnet="resnet8")
    assert Path(result["path"]) == run / "export" / "resnet8.pt"
    code, out, _ = run_cli(capsys, "export", run, "--subnet", "resnet20", "--out", run / "full.pt")
    assert code == 0 and "the full net of" in out and (run / "full.pt").is_file()


def test_plain_run_exports_its_checkpoint_weights(runs, tmp_path, capsys):
    run, summary = runs["plain"]
    ckpt = load_checkpoint(run, "last")
    result = export_model(run, out=tmp_path / "r8.pt")
    saved = torch.load(result["path"], weights_only=True)
    assert saved["model"] == ckpt["model"] and result["model"] == "resnet8"
    assert saved["student"].keys() == ckpt["student"].keys()
    for key, value in ckpt["student"].items():
        assert torch.equal(saved["student"][key], value), key
    assert {"optimizer", "scheduler", "scaler", "rng", "losses"}.isdisjoint(saved)
    assert saved["exported_from"] == {"checkpoint": ckpt["path"], "which": "last", "subnet": None}
    code, out, _ = run_cli(capsys, "eval", result["path"], "--json", "--device", "cpu", "--precision",
                           summary["precision"], "--batch-size", 128)
    assert code == 0 and json.loads(out)["top1"] == summary["top1_last"]
    best = export_model(run, which="best", out=tmp_path / "best.pt")
    assert torch.load(best["path"], weights_only=True)["exported_from"]["which"] == "best"


def test_user_errors_exit_2_with_one_line(runs, capsys, tmp_path):
    ddnn, _ = runs["shared"]
    plain, _ = runs["plain"]
    cases = [
        ((ddnn,), ["--subnet", "resnet20 (the full net), resnet14, resnet8"]),  # missing --subnet
        ((ddnn, "--subnet"), ["resnet20 (the full net), resnet14, resnet8"]),  # --subnet without a name
        ((ddnn, "--subnet", "resnet6"), ["no sub-net 'resnet6'", "resnet14, resnet8"]),
        ((plain, "--subnet", "resnet8"), ["only depth-dynamic (ddnn) runs have sub-nets"]),
        ((tmp_path / "no" / "such" / "run",), ["does not exist"]),
        ((ddnn, "--subnet", "resnet8", "--out", ddnn / "checkpoints" / "last.pt"), ["is the checkpoint"]),
        ((ddnn / "checkpoints" / "last.pt", "--subnet", "resnet8", "--out", ddnn / "checkpoints" / "best.pt"),
         ["one of its run's checkpoints"]),
    ]
    for argv, needles in cases:
        code, out, err = run_cli(capsys, "export", *argv)
        assert code == 2, argv
        assert out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("kdforge export: error: ")
        for needle in needles:
            assert needle in err, (argv, err)
    assert not (ddnn / "export").exists() and not (plain / "export").exists()
    for file in (ddnn / "checkpoints").glob("*.pt"):  # the refused --out left the run's checkpoints intact
        assert load_checkpoint(file)["model"]["name"] == "ddnn"


def test_custom_depth_subnet_without_a_zoo_model_is_refused(tmp_path):
    net = build_model("ddnn", num_classes=10, in_channels=1, full="resnet20", subnets=[[2, 1, 1], "resnet8"],
                      bn="shared")
    assert net.plain_names["d2-1-1"] is None
    atomic_save({"format": FORMAT, "model": net.zoo_record, "student": net.state_dict(), "state": {},
                 "config": {"data": {"name": "digits"}},
                 "data": {"name": "digits", "image_size": 32, "in_channels": 1}}, tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=r"d2-1-1 \(blocks per stage \[2, 1, 1\]\) has no zoo architecture"):
        export_model(tmp_path / "c.pt", subnet="d2-1-1")
    with pytest.raises(ConfigError, match=r"d2-1-1 \(no zoo model: cannot be exported\)"):
        export_model(tmp_path / "c.pt")
    assert export_model(tmp_path / "c.pt", subnet="resnet8")["path"] == str(tmp_path / "export" / "resnet8.pt")


def test_an_export_that_does_not_reproduce_the_logits_is_deleted(runs, tmp_path, monkeypatch):
    run, _ = runs["switchable"]
    original = DepthDynamicNet.subnet_state_dict

    def off_by_a_bit(self, subnet):
        state = original(self, subnet)
        state["fc.bias"] = state["fc.bias"] + 1e-3
        return state

    monkeypatch.setattr(DepthDynamicNet, "subnet_state_dict", off_by_a_bit)
    with pytest.raises(CheckpointError, match="does not reproduce its logits"):
        export_model(run, subnet="resnet8", out=tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_subnet_export_keeps_the_paths_accuracy_when_exported_again(ddnn_epochs, tmp_path):
    run, summary = ddnn_epochs
    epochs = logged_epochs(run)
    full_top1 = [r["eval_top1"] for r in epochs]
    path_top1 = [r["eval_top1/ekd/resnet8"] for r in epochs]
    assert len(epochs) == 3 and path_top1[-1] == summary["paths"]["resnet8"]["top1_last"]
    # the paths really differ, at the end and at their best: else the checks below could not fail
    assert path_top1[-1] != full_top1[-1] and max(path_top1) != max(full_top1)

    direct = export_model(run, subnet="resnet8", out=tmp_path / "resnet8.pt")
    again = export_model(tmp_path / "resnet8.pt", format="onnx", out=tmp_path / "resnet8.onnx")
    for result in (direct, again):
        meta = json.loads(Path(result["metadata"]).read_text())
        assert meta["accuracy"]["top1"] == summary["paths"]["resnet8"]["top1_last"], result["path"]
        assert meta["accuracy"]["which"] == "last" and meta["accuracy"]["split"].startswith("few-shot hold-out")

    # the slim checkpoint's state is the path's own: its top-1 per evaluation, its best, no heads
    state = torch.load(tmp_path / "resnet8.pt", weights_only=True)["state"]
    assert [r["eval_top1"] for r in state["history"]] == path_top1
    assert [r["epoch"] for r in state["history"]] == [r["epoch"] for r in epochs]
    assert not any(key.startswith("eval_") and key != "eval_top1" for r in state["history"] for key in r)
    assert state["best_top1"] == max(path_top1) and state["best_epoch"] == 1 + path_top1.index(max(path_top1))
    assert state["best_top1"] != summary["top1_best"]

    # the full net's export keeps the full net's evaluation and best
    full = export_model(run, subnet="resnet14", out=tmp_path / "resnet14.pt")
    state = torch.load(full["path"], weights_only=True)["state"]
    assert [r["eval_top1"] for r in state["history"]] == full_top1
    assert [r["eval_top5"] for r in state["history"]] == [r["eval_top5"] for r in epochs]
    assert not any(key.startswith("eval_top1/") for r in state["history"] for key in r)
    assert state["best_top1"] == summary["top1_best"] == max(full_top1)
    again = export_model(full["path"], format="onnx", out=tmp_path / "resnet14.onnx")
    assert json.loads(Path(again["metadata"]).read_text())["accuracy"]["top1"] == summary["top1_last"]


def test_metadata_which_is_the_checkpoint_really_loaded(runs, tmp_path):
    plain, summary = runs["plain"]
    # a run folder without best.pt, asked for best: its last.pt is loaded, and said
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(plain / "checkpoints" / "last.pt", folder / "checkpoints" / "last.pt")
    result = export_model(folder, which="best", out=tmp_path / "a.pt")
    meta = json.loads(Path(result["metadata"]).read_text())
    assert result["which"] == meta["source"]["which"] == meta["accuracy"]["which"] == "last"
    assert meta["accuracy"]["top1"] == summary["top1_last"]
    assert torch.load(result["path"], weights_only=True)["exported_from"]["which"] == "last"
    # a lone exported file: whatever `which` asks, it is the checkpoint it was exported from
    best = export_model(plain, which="best", out=tmp_path / "best.pt")
    assert best["which"] == "best"
    for which in ("last", "best"):
        result = export_model(tmp_path / "best.pt", which=which, format="onnx", out=tmp_path / f"{which}.onnx")
        meta = json.loads(Path(result["metadata"]).read_text())
        assert result["which"] == meta["source"]["which"] == meta["accuracy"]["which"] == "best", which
    # a lone training checkpoint, not in a run's checkpoints/: unknown
    shutil.copy(plain / "checkpoints" / "last.pt", tmp_path / "copy.pt")
    result = export_model(tmp_path / "copy.pt", which="best", out=tmp_path / "c.pt")
    meta = json.loads(Path(result["metadata"]).read_text())
    assert result["which"] is None and meta["source"]["which"] is None and meta["accuracy"]["which"] is None
    assert meta["accuracy"]["top1"] == summary["top1_last"]


def test_metadata_names_the_split_its_top1_was_measured_on(tmp_path):
    """With a validation hold-out, best.pt is chosen on it, but a run's top-1 (`eval_top1`) is the eval split's:
    the exported metadata must say "test", not the hold-out that chose the checkpoint."""
    run, summary = tiny_run(tmp_path, "val", {"model": "resnet8"}, {"ce": 1},
                            data={"val_split": {"fraction": 0.2, "seed": 0}}, max_steps=4)
    assert summary["selection_split"].startswith("val") and summary["val_top1_last"] is not None
    for which in ("last", "best"):
        meta = json.loads(Path(export_model(run, which=which, out=tmp_path / f"{which}.pt")["metadata"]).read_text())
        assert meta["accuracy"]["split"] == "test" and meta["accuracy"]["top1"] == summary["top1_last"], which
