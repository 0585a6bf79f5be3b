"""`kdforge export`: a ddnn run's sub-nets and a plain run's model as stand-alone zoo checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.data import load_dataset
from kdforge.data.augment import normalize
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import FORMAT, atomic_save, load_checkpoint, load_model
from kdforge.engine.export import export_model
from kdforge.errors import CheckpointError, ConfigError
from kdforge.models import build_model
from kdforge.models.dynamic import DepthDynamicNet

BN_MODES = DepthDynamicNet.BN_MODES
SUBNETS = ["resnet14", "resnet8"]


def tiny_run(root: Path, name: str, student: dict, losses: dict, **train) -> tuple[Path, dict]:
    """A few steps of a digits run through the real engine, on the CPU in fp32; (run folder, summary)."""
    cfg = config_from_dict({
        "name": name, "seed": 0, "output_dir": str(root), "student": student, "losses": losses,
        "data": {"batch_size": 32, "eval_batch_size": 128},
        "optim": {"lr": 0.1}, "schedule": {"name": "constant", "epochs": 1},
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
