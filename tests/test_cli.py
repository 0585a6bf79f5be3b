import json

import pytest

from kdforge.cli import main
from kdforge.models import build_model
from kdforge.models.complexity import count_macs, count_parameters, format_macs


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_command_has_help(capsys):
    for command in ["train", "eval", "export", "hints", "sftn", "ddnn", "quickstart", "models", "methods", "layers",
                    "attention"]:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: kdforge " + command in capsys.readouterr().out


def test_models_lists_zoo_with_counts(capsys):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("resnet8x4 "))
    assert f"{count_parameters(build_model('resnet8x4', num_classes=100)):,}" in line
    assert "resnet110" in out and "resnet50_imagenet" in out


def test_models_macs_at_an_input_size(capsys):
    """MACs by default; --input-size 64 quadruples every conv's MACs (the classifier's stay)."""
    code, out, _ = run_cli(capsys, "models", "resnet8", "--num-classes", "10", "--input-size", "64")
    assert code == 0
    line = next(l for l in out.splitlines() if l.startswith("resnet8 "))
    model = build_model("resnet8", num_classes=10)
    convs = count_macs(model, 32) - 64 * 10
    assert "64x64" in line and format_macs(4 * convs + 640) in line
    assert "resnet20" not in out  # the pattern picks the model
    code, out, _ = run_cli(capsys, "models", "resnet8", "--no-macs")
    assert code == 0 and "MACs" not in out


def test_methods_list_and_detail(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0 and "Hinton" in out and "ce" in out
    code, out, _ = run_cli(capsys, "methods", "kd")
    assert code == 0 and "T" in out and "4.0" in out and "hint" not in out
    code, out, _ = run_cli(capsys, "methods", "fitnet")
    assert code == 0 and "PURSUhInT hint layers" in out


def test_layers_lists_names_and_shapes(capsys):
    code, out, _ = run_cli(capsys, "layers", "resnet8", "--num-classes", "10")
    assert code == 0
    row = next(l for l in out.splitlines() if l.startswith("layer1 "))
    assert "16x32x32" in row and "stage end" in row


def test_user_errors_exit_2_with_one_line(capsys):
    code, out, err = run_cli(capsys, "layers", "resnt8x4")
    assert code == 2 and "resnet8x4" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "train", "--set", "optim.lrr=1")
    assert code == 2 and "optim.lrr" in err
    code, out, err = run_cli(capsys, "eval", "no/such/run")
    assert code == 2 and "does not exist" in err


def test_train_then_eval(tmp_path, capsys):
    args = ["train", "--set", f"output_dir={tmp_path}", "--set", "name=tiny", "--set", "schedule.epochs=1",
            "--set", "train.max_steps=4", "--set", "train.progress=false", "--set", "data.batch_size=32",
            "--set", "train.tensorboard=false", "--set", "train.device=cpu"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    summary = json.loads(out)
    assert summary["steps"] == 4 and summary["epochs"] == 4 / (1437 // 32)  # stopped inside epoch 1
    code, _, err = run_cli(capsys, *args)  # same name again: refused, nothing lost
    assert code == 2 and "--resume" in err
    code, out, _ = run_cli(capsys, "eval", str(tmp_path / "tiny"), "--json")
    assert code == 0
    assert json.loads(out)["top1"] == pytest.approx(summary["top1_last"])
