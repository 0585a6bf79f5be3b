import argparse
import importlib
import json
import pkgutil
import re
from types import SimpleNamespace

import pytest

import kdforge.cli
from kdforge.cli import build_parser, main
from kdforge.models import build_model
from kdforge.models.complexity import count_macs, count_parameters, format_macs


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def registered_commands() -> dict[str, argparse.ArgumentParser]:
    """The sub-commands `kdforge` parses: name -> its parser."""
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_module_is_registered():
    """One sub-command per module of kdforge.cli (info holds several): each one a module adds is parsed."""
    registered = set(registered_commands())
    for info in pkgutil.iter_modules(kdforge.cli.__path__):
        module = importlib.import_module(f"kdforge.cli.{info.name}")
        adders = [module.add_parser] if hasattr(module, "add_parser") else \
            [v.add_parser for v in vars(module).values() if isinstance(v, SimpleNamespace) and hasattr(v, "add_parser")]
        for add in adders:
            sub = argparse.ArgumentParser(prog="kdforge").add_subparsers()
            add(sub)
            for name in sub.choices:
                assert name in registered, f"kdforge.cli.{info.name} adds {name!r}, which kdforge does not register"
    assert {"train", "eval", "export", "predict", "report", "netgraft", "methods"} <= registered


def test_every_command_has_help(capsys):
    for command in registered_commands():
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0, command
        out = capsys.readouterr().out
        assert re.match(rf"usage: kdforge {re.escape(command)}\s", out), out[:200]
        assert "options:" in out, command


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


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("columns", [80, 60])
def test_methods_listing_fits_the_terminal(columns, capsys, monkeypatch):
    """No line wider than COLUMNS; papers are wrapped, not cut; left-out columns are named."""
    from kdforge.methods import method_class, method_names

    monkeypatch.setenv("COLUMNS", str(columns))
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert max(map(len, out.splitlines())) <= columns
    starts = {line.split()[0] for line in out.splitlines() if line.strip()}
    for name in method_names():
        assert name in starts and _flat(method_class(name).paper) in _flat(out)
    assert "taps by default" in _flat(out) and "kdforge methods NAME" in out


def test_methods_wide_listing_has_every_column(capsys, monkeypatch):
    """Wide enough, nothing is left out: sftn's required `student` reads 'required'."""
    monkeypatch.setenv("COLUMNS", "600")
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    header = out.splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["method", "teacher", "hints", "ViT", "weight",
                                                         "taps by default", "defaults", "paper"]
    assert "student=required" in out and "inspect" not in out and "Left out" not in out
    from kdforge.methods import method_class, method_names

    vit = {line.split()[0]: line.split()[3] for line in out.splitlines()[2:]
           if line[:1].strip() and line.split()[0] in method_names()}
    assert len(vit) == len(method_names())
    assert vit == {name: "yes" if method_class(name).token_models is None else "no" for name in vit}
    assert vit["at"] == "yes" and vit["catkd"] == "no"


def test_methods_detail_shows_everything(capsys, monkeypatch):
    """`kdforge methods NAME`: the whole description, every parameter with its default, the paper,
    and a config example in which a required parameter is marked as such."""
    import inspect

    from kdforge.methods import method_class, method_params

    monkeypatch.setenv("COLUMNS", "80")
    for name in ("ekd", "sftn"):
        code, out, _ = run_cli(capsys, "methods", name)
        assert code == 0
        cls = method_class(name)
        assert _flat(inspect.getdoc(cls)) in _flat(out) and _flat(cls.paper) in _flat(out)
        rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line[:1].isalpha()}
        for p in method_params(name):
            wanted = "required" if p.default is inspect.Parameter.empty else repr(p.default)
            assert rows[p.name] == wanted
    assert "      student: <required str>" in out.splitlines() and "inspect" not in out


def test_output_into_a_closed_pipe_is_no_traceback(monkeypatch):
    """`kdforge methods | head`: the reader has gone; the command stops quietly (exit 141, as a shell's SIGPIPE)."""
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write fails with EPIPE
    closed = open(write_end, "w", buffering=1)  # line-buffered: the first line is written at once
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        assert main(["methods"]) == 141
    finally:
        monkeypatch.undo()
        closed.close()
