"""The bad-input catalogue: each common mistake, run through the real CLI, ends in one clear line.

Every row: exit code 2, stderr exactly one line `kdforge CMD: error: ...` naming the offending
field, file or name (and for a misspelt name, the close matches), no traceback. docs/errors.md
lists the same entries with the messages.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from kdforge.cli import main

#: a run that stops after one step on digits, quietly, on the CPU
QUICK = ["train.max_steps=1", "schedule.epochs=1", "train.progress=false", "train.tensorboard=false",
         "train.device=cpu", "output_dir={tmp}/runs"]


def train(*sets: str) -> list[str]:
    """argv of `kdforge train` with QUICK and `sets` as --set overrides."""
    return ["train", *(a for s in (*QUICK, *sets) for a in ("--set", s))]


def _cifar_batch(labels: list[int], columns: int = 3072) -> bytes:
    return pickle.dumps({b"data": np.zeros((len(labels), columns), np.uint8), b"labels": labels}, protocol=2)


def _cifar10(folder, **files: bytes | None) -> None:
    """A cifar-10-batches-py folder of 2-image batches; `files` replaces (bytes) or leaves out (None) one."""
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        raw = files.get(name, _cifar_batch([0, 1]))
        if raw is not None:
            (folder / name).write_bytes(raw)


def _svhn(folder, y: np.ndarray, truncate: bool = False) -> None:
    from scipy.io import savemat

    folder.mkdir(parents=True)
    path = folder / "train_32x32.mat"
    savemat(str(path), {"X": np.zeros((32, 32, 3, len(y)), np.uint8), "y": y}, format="5")
    if truncate:
        path.write_bytes(path.read_bytes()[:300])


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Placeholders of the table: {tmp}, {teacher} (a resnet8 run on digits), {mobilenet} (a
    mobilenetv2 run, width_mult 0.5) and the bad files and folders, made once."""
    tmp = tmp_path_factory.mktemp("bad_input")
    out = {"tmp": str(tmp)}
    for name, model in (("teacher", "resnet8"), ("mobilenet", "mobilenetv2")):
        argv = train(f"name={name}", f"student.model={model}", "data.batch_size=8", "data.eval_split=''")
        assert main([a.format(**out) for a in argv]) == 0
        out[name] = str(tmp / "runs" / name)
    good = (tmp / "runs" / "teacher" / "checkpoints" / "last.pt").read_bytes()
    (tmp / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp / "link.pt").write_text("https://example.org/resnet8.pt\n")  # the link saved, not the file
    torch.save({"weights": torch.zeros(2)}, tmp / "foreign.pt")
    (tmp / "bad.yaml").write_text("optim:\n  lr: 0.1\n   momentum: 0.9\n")
    (tmp / "empty").mkdir()
    batch = _cifar_batch([0, 1, 2, 3])
    _cifar10(tmp / "no_batch4" / "cifar-10-batches-py", data_batch_4=None)
    _cifar10(tmp / "truncated" / "cifar-10-batches-py", data_batch_3=batch[: len(batch) // 2])
    _cifar10(tmp / "garbage" / "cifar-10-batches-py", test_batch=b"\x00garbage\xff" * 10)
    _cifar10(tmp / "wrong_shape" / "cifar-10-batches-py", test_batch=_cifar_batch([0, 1], columns=1024))
    _cifar10(tmp / "label10" / "cifar-10-batches-py", data_batch_2=_cifar_batch([0, 10, 1]))
    c100 = tmp / "c100" / "cifar-100-python"
    c100.mkdir(parents=True)
    for split in ("train", "test"):
        (c100 / split).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 99],
                                                 b"coarse_labels": [0, 20]}))
    _svhn(tmp / "svhn_truncated", np.ones((50, 1), np.uint8), truncate=True)
    _svhn(tmp / "svhn_label11", np.array([[1], [11]], np.uint8))
    # 12-13. non-finite numbers, files where folders belong (and back), text that is not UTF-8
    (tmp / "afile").write_text("not a folder\n")
    (tmp / "runs" / "afile").write_text("not a run folder\n")
    (tmp / "nan.yaml").write_text("optim:\n  lr: .nan\n")
    (tmp / "latin1.yaml").write_bytes("name: café\n".encode("latin-1"))
    (tmp / "utf16.json").write_bytes('{"format": "x"}'.encode("utf-16"))
    (tmp / "imgf").mkdir()
    (tmp / "imgf" / "test").write_text("a split folder written as a file\n")
    _cifar10(tmp / "batch_dir" / "cifar-10-batches-py", test_batch=None)
    (tmp / "batch_dir" / "cifar-10-batches-py" / "test_batch").mkdir()
    return out


def row(argv: list[str], *facts: str, id: str, marks=()):
    return pytest.param(argv, facts, id=id, marks=marks)


KD = ("teacher.checkpoint={teacher}", "losses.kd=0.9")
CATALOGUE = [
    # 1. unknown model names
    row(train("student.model=resnet8x"), "student.model", "'resnet8x'", "Did you mean: resnet8x4",
        id="unknown-student-model"),
    row(train("teacher.model=resnet2O", *KD), "teacher.model", "'resnet2O'", "resnet20", id="unknown-teacher-model"),
    row(train("student.options.widht=2"), "student.options", "'widht'", "zero_init_residual",
        id="unknown-model-option"),
    # 2. unknown methods and method options
    row(train("losses.kdd=0.9"), "losses.kdd", "'kdd'", "Did you mean: kd", id="unknown-method"),
    row(train("losses.kd.TT=2"), "losses.kd.TT", "Did you mean: T", id="unknown-method-option"),
    row(train("losses.kd.T=abc"), "losses.kd.T", "expected a number", id="method-option-type"),
    row(train("losses.kd=0.9"), "losses ['kd'] need a teacher", "teacher.checkpoint", id="method-without-teacher"),
    # 3. unknown dataset
    row(train("data.name=cifar-1O"), "'cifar-1O'", "'cifar10'", "Known datasets", id="unknown-dataset"),
    row(["eval", "{teacher}", "--data", "cifar1O"], "'cifar1O'", "'cifar10'", id="eval-unknown-dataset"),
    # 4. config: types, values, keys, files
    row(train("optim.lr=abc"), "optim.lr", "expected a number", "'abc'", id="lr-not-a-number"),
    row(train("data.batch_size=1.5"), "data.batch_size", "expected an integer", "1.5", id="batch-size-float"),
    row(train("schedule.epochs=[1]"), "schedule.epochs", "expected an integer", "[1]", id="epochs-list"),
    row(train("data.batch_size=0"), "data.batch_size", "positive integer", "0", id="batch-size-zero"),
    row(train("data.batch_size=-4"), "data.batch_size", "positive integer", "-4", id="batch-size-negative"),
    row(train("data.batch_size=5000"), "data.batch_size=5000", "1437 images", id="batch-size-above-dataset"),
    row(train("optim.name=sgdd"), "optim.name", "'sgdd'", "'sgd'", id="optimizer-choice"),
    row(train("train.device=gpu"), "train.device", "'gpu'", "cpu", id="device-name"),
    row(train("optim.lrr=1"), "optim.lrr", "Did you mean: lr", id="unknown-config-key"),
    row(train("optimm.lr=1"), "optimm", "Did you mean: optim", id="unknown-config-section"),
    row(["train", "--set", "optim.lr"], "optim.lr", "KEY.PATH=VALUE", id="set-without-equals"),
    row(train("optim.lr=[1"), "optim.lr=[1", "not valid YAML", "line 1, column 3", id="set-value-bad-yaml"),
    row(["train", "{tmp}/bad.yaml"], "{tmp}/bad.yaml", "not valid YAML", "line 3, column 12", id="yaml-syntax"),
    row(["train", "{tmp}/none.yaml"], "{tmp}/none.yaml", "does not exist", id="config-file-missing"),
    row(train("data.eval_split=val"), "split", "'val'", "train, test", id="unknown-split"),
    row(train("data.options.chanels=3"), "data.options", "chanels", "channels", id="unknown-data-option"),
    # 5. missing data
    row(train("data.name=cifar10", "data.root={tmp}/nowhere"), "'{tmp}/nowhere' does not exist",
        "cifar-10-python.tar.gz", id="data-folder-missing"),
    row(train("data.name=cifar10", "data.root={tmp}/empty"), "no data set found in '{tmp}/empty'",
        "cifar-10-batches-py", id="data-folder-empty"),
    row(train("data.name=cifar10", "data.root={tmp}/no_batch4"), "missing file", "data_batch_4",
        id="data-file-missing"),
    row(train("data.name=svhn", "data.root={tmp}/nowhere"), "'{tmp}/nowhere' does not exist", "train_32x32.mat",
        id="svhn-folder-missing"),
    # 6. truncated or wrong-format data files
    row(train("data.name=cifar10", "data.root={tmp}/truncated"), "cifar-10-batches-py/data_batch_3'", "truncated",
        id="cifar-truncated"),
    row(train("data.name=cifar10", "data.root={tmp}/garbage"), "cifar-10-batches-py/test_batch'",
        "not a readable pickle", id="cifar-not-a-pickle"),
    row(train("data.name=cifar10", "data.root={tmp}/wrong_shape"), "cifar-10-batches-py/test_batch' is an array",
        id="cifar-wrong-shape"),
    row(train("data.name=svhn", "data.root={tmp}/svhn_truncated"), "svhn_truncated/train_32x32.mat'", "truncated",
        id="svhn-truncated"),
    # 7. labels out of range
    row(train("data.name=cifar10", "data.root={tmp}/label10"), "label 10", "data_batch_2'", "[0, 10)",
        id="cifar10-label-out-of-range"),
    row(train("data.name=cifar100", "data.root={tmp}/c100", "data.options.label_type=coarse"), "label 20",
        "cifar-100-python/train'", "[0, 20)", id="cifar100-coarse-label-out-of-range"),
    row(train("data.name=svhn", "data.root={tmp}/svhn_label11"), "label 11", "svhn_label11/train_32x32.mat'",
        "labels 1..10", id="svhn-label-out-of-range"),
    # 8. checkpoints of another architecture, or not checkpoints at all
    row(train("teacher.model=resnet20", *KD), "teacher.checkpoint", "holds a resnet8", "teacher.model is resnet20",
        id="teacher-checkpoint-other-model"),
    row(train("teacher.options.width_mult=0.25", "teacher.checkpoint={mobilenet}", "losses.kd=0.9"),
        "{mobilenet}/checkpoints/last.pt", "conv1.weight", "(16, 1, 3, 3)", "(8, 1, 3, 3)",
        id="teacher-checkpoint-other-width"),
    row(train("teacher.checkpoint={tmp}/nothere", "losses.kd=0.9"), "{tmp}/nothere does not exist",
        id="teacher-checkpoint-missing"),
    row(["eval", "{tmp}/link.pt"], "{tmp}/link.pt cannot be read", id="eval-not-a-checkpoint"),
    row(["eval", "{tmp}/trunc.pt"], "{tmp}/trunc.pt cannot be read", "truncated", id="eval-truncated-checkpoint"),
    row(["eval", "{tmp}/foreign.pt"], "{tmp}/foreign.pt is not a kdforge checkpoint", id="eval-foreign-file"),
    row(["export", "{tmp}/trunc.pt", "--out", "{tmp}/x.pt"], "{tmp}/trunc.pt cannot be read",
        id="export-truncated-checkpoint"),
    # 9. layer names that do not exist
    row(train("teacher.checkpoint={teacher}", "losses.fitnet.student_layers=[layer9]",
              "losses.fitnet.teacher_layers=[layer2]"),
        "resnet8 has no module named 'layer9'", "Did you mean: layer3", "kdforge layers resnet8", id="student-layer"),
    row(train("teacher.checkpoint={teacher}", "losses.fitnet.student_layers=[layer2]",
              "losses.fitnet.teacher_layers=[layr2]"),
        "teacher resnet8 has no module named 'layr2'", "Did you mean: layer2", id="teacher-layer"),
    row(train("teacher.checkpoint={teacher}", "losses.fitnet.student_layer=layer9"), "losses.fitnet.student_layer",
        "Did you mean: student_layers", id="layer-option-misspelt"),
    # 10. teacher trained for another number of classes
    row(train(*KD, "data.name=cifar100", "data.root={tmp}/c100"), "teacher.checkpoint",
        "num_classes=10", "has 100", id="teacher-num-classes"),
    row(["eval", "{teacher}", "--data", "cifar100", "--root", "{tmp}/c100"], "for 10 classes", "100 classes",
        id="eval-num-classes"),
    # 12. non-finite numbers: .nan/.inf, or nan/inf as text, in any float field
    row(train("optim.lr=.nan"), "optim.lr", "finite", id="lr-nan"),
    row(train("optim.lr=inf"), "optim.lr", "finite", id="lr-inf-as-text"),
    row(train("optim.lr='nan'"), "optim.lr", "finite", id="lr-nan-quoted"),
    row(train("schedule.gamma=-.inf"), "schedule.gamma", "finite", id="gamma-minus-inf"),
    row(train("schedule.warmup_epochs=.inf"), "schedule.warmup_epochs", "finite", id="warmup-inf"),
    row(train("optim.betas=[0.9,.nan]"), "optim.betas[1]", "finite", id="betas-nan"),
    row(train("optim.lr_groups.fc=.inf"), "optim.lr_groups.fc", "finite", id="lr-group-inf"),
    row(train("train.teacher_cache_max_gb=.nan"), "train.teacher_cache_max_gb", "finite", id="cache-size-nan"),
    row(train("losses.ce=.nan"), "losses.ce", "finite", id="loss-weight-nan"),
    row(train("teacher.checkpoint={teacher}", "losses.kd.T=.nan"), "losses.kd.T", "finite",
        id="method-parameter-nan"),
    row(["train", "{tmp}/nan.yaml"], "optim.lr", "finite", id="config-file-nan"),
    row(train("data.name=imagefolder", "data.root={tmp}/empty", "data.options.mean=[.nan,0,0]",
              "data.options.std=[1,1,1]"), "imagefolder", "mean", "finite", id="data-option-mean-nan"),
    row(train("data.name=imagefolder", "data.root={tmp}/empty", "data.options.image_size=.nan"), "imagefolder",
        "image_size", "positive integer", id="data-option-size-nan"),
    # 13. a file where a folder belongs, a folder where a file belongs, text that is not UTF-8
    row(["train", "{tmp}/latin1.yaml"], "config file {tmp}/latin1.yaml", "not UTF-8 text", id="config-not-utf8"),
    row(["train", "{tmp}/empty"], "config file {tmp}/empty", "folder", id="config-file-is-a-folder"),
    row(train("output_dir={tmp}/afile"), "output_dir", "{tmp}/afile is a file", id="output-dir-is-a-file"),
    row(train("name=afile"), "name", "{tmp}/runs/afile is a file", id="run-folder-is-a-file"),
    row(train("output_dir=/proc/kdforge-cannot"), "output_dir: /proc/kdforge-cannot cannot be made",
        "give a folder you can write to", id="output-dir-cannot-be-made"),
    row(["pack", "{tmp}/empty", "{tmp}/shards"], "{tmp}/empty has no split folders", "nothing to pack",
        id="pack-without-splits"),
    row(train("name=''"), "name", "''", "not a folder name inside output_dir", id="run-name-empty"),
    row(train("name=../escape"), "name", "'../escape'", "not a folder name inside output_dir",
        id="run-name-outside-output-dir"),
    row(train("data.name=cifar10", "data.root={tmp}/afile"), "'{tmp}/afile' is not a folder",
        id="data-root-is-a-file"),
    row(train("data.name=imagefolder", "data.root={tmp}/afile"), "'{tmp}/afile' is a file, not a folder",
        id="imagefolder-root-is-a-file"),
    row(train("data.name=imagefolder", "data.root={tmp}/imgf", "data.train_split=test"),
        "split folder '{tmp}/imgf/test' is a file, not a folder", id="imagefolder-split-is-a-file"),
    row(train("data.name=cifar10", "data.root={tmp}/batch_dir"), "cifar-10-batches-py/test_batch' is a folder",
        id="data-file-is-a-folder"),
    row(train("teacher.checkpoint={tmp}/empty", "losses.kd=0.9"), "run folder {tmp}/empty has no checkpoints",
        "train it first", id="teacher-checkpoint-folder-without-checkpoints"),
    row(train("teacher.checkpoint={tmp}/afile", "losses.kd=0.9"), "{tmp}/afile cannot be read",
        id="teacher-checkpoint-text-file"),
    row(["ddnn", "--full", "resnet14", "--subnets", "resnet8", "--out", "{tmp}/afile/ddnn"], "--out {tmp}/afile/ddnn",
        "{tmp}/afile is a file", id="recipe-out-under-a-file"),
    row(["sftn", "--out", "{tmp}/afile"], "--out {tmp}/afile", "is a file, not a folder", id="recipe-out-is-a-file"),
    row(["export", "{tmp}/empty"], "run folder {tmp}/empty has no checkpoints", "checkpoints/last.pt is missing",
        "train it first", id="export-without-checkpoints"),
    row(train("losses.simkd=1"), "losses.simkd reuses the teacher's classifier: set teacher.checkpoint",
        id="simkd-without-teacher"),
    row(train(*KD, "losses.sskd.ratio_ss=2"), "losses.sskd: ratio_ss: the share of wrong rows kept, in [0, 1], got 2.0",
        id="sskd-ratio-out-of-range"),
    row(train("teacher.checkpoint={teacher}", "losses.mlkd.strong_view=true", "losses.mlkd.strong_temperatures=[7]"),
        "mlkd: strong_temperatures [7.0] must be among temperatures [2.0, 3.0, 4.0, 5.0, 6.0]",
        id="mlkd-strong-temperature-not-among-temperatures"),
    row(train("teacher.checkpoint={teacher}", "losses.mlkd.strong_ce=-1"), "losses.mlkd", "strong_ce is a weight, >= 0",
        id="mlkd-strong-ce-negative"),
    row(["eval", "{tmp}/empty"], "run folder {tmp}/empty has no checkpoints", "train it first",
        id="eval-without-checkpoints"),
    row(train("teacher.checkpoint={teacher}", "losses.fitnet=1", "hints.select={tmp}/nothere.json"),
        "hint selection {tmp}/nothere.json does not exist", "kdforge hints", id="hints-file-missing"),
    row(train("teacher.checkpoint={teacher}", "losses.fitnet=1", "hints.select={tmp}/utf16.json"),
        "hint selection {tmp}/utf16.json cannot be read", "utf-8", id="hints-file-not-utf8"),
    row(train("teacher.checkpoint={teacher}", "losses.fitnet=1", "hints.select={tmp}/empty"),
        "hint selection {tmp}/empty is a folder", id="hints-file-is-a-folder"),
]


@pytest.mark.parametrize("argv, facts", CATALOGUE)
def test_bad_input_is_one_clear_line(argv, facts, paths, capsys):
    code = main([a.format(**paths) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "\t" not in err
    assert len(err.splitlines()) == 1 and err.startswith(f"kdforge {argv[0]}: error: "), err
    for fact in facts:
        assert fact.format(**paths) in err


@pytest.mark.parametrize("before", [True, False], ids=["debug-first", "debug-last"])
def test_debug_shows_the_traceback(before, paths, capsys):
    argv = [a.format(**paths) for a in train("optim.lrr=1")]
    code = main(["--debug", *argv] if before else [*argv, "--debug"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("Traceback") and "ConfigError" in err
    assert err.splitlines()[-1].startswith("kdforge train: error: unknown config key 'optim.lrr'")


@pytest.mark.parametrize("argv", [["export", "{tmp}/empty"], ["eval", "{tmp}/empty"],
                                  train("teacher.checkpoint={tmp}/empty", "losses.kd=0.9")],
                         ids=["export", "eval", "teacher"])
def test_missing_checkpoint_is_named_once(argv, paths, capsys):
    """A run folder without checkpoints: each file name once (it was 'checkpoints/last.pt or checkpoints/last.pt')."""
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("last.pt") == 1 and err.count("best.pt") <= 1, err


def test_class_folder_name_not_utf8(paths, tmp_path, capsys):
    """An imagefolder class folder whose name is not UTF-8 (it would become a class name in the checkpoint)."""
    split = tmp_path / "latin" / "train"
    split.mkdir(parents=True)
    try:
        os.mkdir(os.fsencode(split) + b"/caf\xe9")
    except (OSError, UnicodeError):
        pytest.skip("this file system does not keep names that are not UTF-8")
    argv = [a.format(**paths) for a in train("data.name=imagefolder", f"data.root={tmp_path / 'latin'}")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"class folder '{split}/caf" in err and "not UTF-8" in err and "b'caf\\xe9'" in err, err
