"""`kdforge ddnn`: the DDNN + EKD vs independent-depths recipe, its configs and its shell script."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from kdforge.cli import main
from kdforge.config import load_config
from kdforge.errors import ConfigError
from kdforge.methods import Losses
from kdforge.models import build_model, model_names
from kdforge.models.complexity import format_macs
from kdforge.recipes.ddnn import plan_ddnn
from kdforge.recipes.quickstart import BASE

ROOT = Path(__file__).parent.parent
TINY = ["--seeds", "0", "--epochs", "1", "--set", "train.max_steps=3", "--set", "train.device=cpu",
        "--set", "train.tensorboard=false", "--no-progress"]


def table_rows(text):
    """{first cell: cells} of the markdown table rows in `text`."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| depth")]
    return {r[0]: r for r in rows}


def test_pipeline_table_reuse_and_refusal(tmp_path, capsys):
    args = ["ddnn", "--full", "resnet14", "--subnets", "resnet8", *TINY, "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "summary.json").is_file())
    assert runs == ["alone-resnet14-seed0", "alone-resnet8-seed0", "ekd-seed0"]
    read = {name: json.loads((tmp_path / name / "summary.json").read_text()) for name in runs}
    ekd = read["ekd-seed0"]
    assert ekd["student"] == "ddnn" and set(ekd["losses"]) == {"ekd"}
    assert list(ekd["paths"]) == ["resnet14", "resnet8"]
    rows = table_rows(out)
    assert set(rows) == {"resnet14 (full)", "resnet8"}
    last = [json.loads(line) for line in (tmp_path / "ekd-seed0" / "log.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "epoch"][-1]
    direct = (last["train_ekd/resnet8/kl"] + last["train_ekd/resnet8/at"]) / last["train_ekd/resnet8/ce"]
    assert direct > 0
    ratio = {"resnet14": "-", "resnet8": f"{direct:.3f}"}  # the sub-net's distillation terms over its CE
    for model, label in (("resnet14", "resnet14 (full)"), ("resnet8", "resnet8")):
        path, alone = ekd["paths"][model], read[f"alone-{model}-seed0"]
        assert alone["student"] == model and alone["losses"] == {"ce": 1.0} and alone["epochs"] == ekd["epochs"]
        assert path["params"] == alone["params"]  # the DDNN path is exactly the plain model
        ekd_top1, alone_top1 = path["top1_last"], alone["top1_last"]
        assert rows[label] == [label, {"resnet14": "2-2-2", "resnet8": "1-1-1"}[model], f"{alone['params']:,}",
                               format_macs(path["macs"]), f"{ekd_top1:.2f} ± 0.00", ratio[model],
                               f"{alone_top1:.2f} ± 0.00", f"{ekd_top1 - alone_top1:+.2f} ± 0.00"]
    s_per_epoch = ekd["train_time_s"] / ekd["epochs"]
    both = sum(read[f"alone-{m}-seed0"]["train_time_s"] / read[f"alone-{m}-seed0"]["epochs"]
               for m in ("resnet14", "resnet8"))
    assert f"EKD run {s_per_epoch:.2f} vs the 2 independent runs together {both:.2f}" in out
    assert (tmp_path / "results.md").read_text().strip() in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in saved["rows"]] == ["resnet14", "resnet8"]
    assert saved["rows"][1]["ekd_top1"] == [ekd["paths"]["resnet8"]["top1_last"]]

    # the report: each EKD path a row beside the same depth trained alone, with the summaries' numbers
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    by_label = {g["label"]: g for g in report["groups"]}
    assert sorted(by_label) == ["alone-resnet14", "alone-resnet8", "ekd [resnet14]", "ekd [resnet8]"]
    for model in ("resnet14", "resnet8"):
        assert by_label[f"ekd [{model}]"]["metrics"]["top1_last"]["values"] == [ekd["paths"][model]["top1_last"]]
        assert by_label[f"alone-{model}"]["metrics"]["top1_last"]["values"] == [read[f"alone-{model}-seed0"]["top1_last"]]
    assert str(tmp_path / "report" / "report.html") in out
    stamps = {p: (p / "summary.json").stat().st_mtime_ns for p in tmp_path.iterdir() if p.name in runs}
    assert main(args) == 0  # again: every run is finished, nothing retrains
    assert stamps == {p: (p / "summary.json").stat().st_mtime_ns for p in stamps}
    assert "| resnet8 |" in capsys.readouterr().out
    for other in (["--epochs", "2"], ["--bn", "shared"], ["--ekd", "lambda_at=0"],
                  ["--set", "train.channels_last=true"]):  # everything a resume would refuse
        assert main(args + other) == 2  # a folder made with other settings: never silently reused
        err = capsys.readouterr().err
        assert "another --out" in err and err.count("\n") == 1
    assert stamps == {p: (p / "summary.json").stat().st_mtime_ns for p in stamps}


@pytest.mark.parametrize("extra, message", [
    (["--full", "resnet999"], "resnet999"),
    (["--full", "vgg8"], "ResNets"),
    (["--subnets", "resnet20"], "more blocks"),  # resnet20 [3,3,3] is not inside resnet14 [2,2,2]
    (["--subnets", "wrn_16_2"], "sub-net"),
    (["--subnets", "2,1,1"], "no zoo model"),  # a custom depth list cannot be trained alone
    (["--subnets", "resnet8", "1,1,1"], "give each depth once"),
    (["--subnets", "1,1"], "stage depths"),
    (["--bn", "private"], "switchable"),
    (["--ekd", "lambda_kl=-1"], "lambda_kl"),
    (["--ekd", "beta=1"], "not an EKD parameter"),
    (["--ekd", "subnets=[resnet20]"], "ekd.subnets"),
    (["--seeds", "0", "0"], "each seed once"),
    (["--set", "student.model=resnet8"], "pipeline decides"),
])
def test_bad_input_fails_in_one_line_before_training(tmp_path, capsys, extra, message):
    args = ["ddnn", "--full", "resnet14", "--subnets", "resnet8", *TINY, "--out", str(tmp_path / "out"), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # refused before anything was trained or even created


def test_depth_lists_train_independently_only_as_zoo_models(tmp_path):
    plan = dict(base=BASE, seeds=[0], output_dir=tmp_path, bn="switchable", ekd=None)
    zoo = plan_ddnn("resnet14", [[1, 1, 1]], independent=True, **plan)  # resnet8's layout
    assert zoo.paths == ["resnet14", "d1-1-1"] and zoo.independent == ["resnet14", "resnet8"]
    assert zoo.run("resnet8", 0).config["student"] == {"model": "resnet8"}
    custom = plan_ddnn("resnet14", [[2, 1, 1]], independent=False, **plan)
    assert custom.independent == [] and [(r.label, r.seed) for r in custom.runs] == [("ekd", 0)]
    assert custom.run("ekd", 0).config["student"]["options"]["subnets"] == [[2, 1, 1]]
    with pytest.raises(ConfigError, match="no zoo model"):
        plan_ddnn("resnet14", [[2, 1, 1]], independent=True, **plan)
    only = plan_ddnn("resnet20", ["resnet14", "resnet8"], independent=True, **{**plan, "ekd": {"subnets": ["resnet8"]}})
    assert only.paths == ["resnet20", "resnet8"]  # EKD trains only resnet8, so only it is compared
    assert not any(tmp_path.iterdir())


def check(cfg):
    assert cfg.student.model in model_names()
    Losses.from_config(cfg.losses)
    return build_model(cfg.student.model, num_classes=10, **cfg.student.options)


def test_configs_validate():
    cifar = load_config([ROOT / "configs/cifar100/base.yaml", ROOT / "configs/cifar100/ddnn/resnet56_ekd.yaml"])
    assert check(cifar).names == ["resnet56", "resnet44", "resnet32", "resnet20"]
    assert cifar.data.name == "cifar100" and cifar.schedule.epochs == 240 and cifar.data.batch_size in (64, 128)
    imagenet = load_config([ROOT / "configs/imagenet/base.yaml", ROOT / "configs/imagenet/ddnn/resnet34_ekd.yaml"])
    assert check(imagenet).names == ["resnet34_imagenet", "resnet18_imagenet"]
    assert imagenet.data.name == "imagenet" and imagenet.data.eval_split == "val" and imagenet.data.streaming
    assert (imagenet.optim.lr, imagenet.optim.weight_decay, imagenet.data.batch_size) == (0.1, 1e-4, 256)
    assert imagenet.schedule.epochs == 90 and imagenet.schedule.milestones == [30, 60]


def test_imagenet_base_streams_an_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    from kdforge.engine.run import load_datasets

    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (tmp_path / split / wnid).mkdir(parents=True)
            for i in range(2):
                pixels = np.random.default_rng(i).integers(0, 255, (90, 120, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / wnid / f"{wnid}_{i}.JPEG")
    cfg = load_config([ROOT / "configs/imagenet/base.yaml"], [f"data.root={tmp_path}"])
    train, val = load_datasets(cfg)
    assert train.streaming and train.train and not val.train and len(train) == 4
    image, _, _ = train[(0, 7)]  # RandomResizedCrop 224 of a 120 x 90 file
    assert tuple(image.shape) == (3, 224, 224) and val.num_classes == train.num_classes == 2


def test_script_runs_the_pipeline_resumably(tmp_path):
    log, fake = tmp_path / "calls", tmp_path / "bin" / "kdforge"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\t" "$@" >> {log}\necho >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "DATA": "/data", "SEEDS": "0 1", "BNS": "switchable recalibrate",
           "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / "benchmarks/ddnn_cifar100.sh")], check=True, env=env, capture_output=True)
    calls = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]
    assert [c[0] for c in calls] == ["ddnn", "ddnn"]
    for argv, bn in zip(calls, ("switchable", "recalibrate")):
        base = load_config([ROOT / argv[1]], [argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
        assert base.data.name == "cifar100" and base.data.root == "/data" and base.schedule.epochs == 240
        assert argv[argv.index("--full") + 1] == "resnet56" and argv[argv.index("--bn") + 1] == bn
        assert argv[argv.index("--subnets") + 1:argv.index("--subnets") + 4] == ["resnet44", "resnet32", "resnet20"]
        assert argv[argv.index("--out") + 1] == f"runs/cifar100-ddnn-resnet56-{bn}"
    assert "--no-independent" not in calls[0] and "--no-independent" in calls[1]  # baselines trained once
