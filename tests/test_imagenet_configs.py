"""The ImageNet recipes under configs/imagenet/ (docs/imagenet.md): every file, merged after the base it is meant
to follow, validates as `kdforge train --print-config` would validate it (no data or weights are read), and
says what its comment header says; each method's config trains one step on a tiny image folder (slow). A new file
under configs/imagenet/ must be added to AFTER."""

import json
import math
from pathlib import Path

import pytest

from kdforge.cli import main
from kdforge.config import config_from_dict, load_config, merge_configs
from kdforge.config_files import read_yaml
from kdforge.methods import Losses, method_names
from kdforge.models import model_names
from kdforge.recipes.runs import DECIDED

IMAGENET = Path(__file__).parent.parent / "configs" / "imagenet"
BASE, TABLE_BASE = "base.yaml", "kd_table/base.yaml"

#: every YAML file under configs/imagenet/ -> the files merged before it (as its header's command line says)
AFTER = {
    BASE: [],
    "ddnn/resnet34_ekd.yaml": [BASE],
    "teachers/resnet34.yaml": [BASE],
    "sftn/resnet34-resnet18.yaml": [BASE],
    TABLE_BASE: [],
    "kd_table/baseline.yaml": [TABLE_BASE],
    "kd_table/kd.yaml": [TABLE_BASE],
    "kd_table/dkd.yaml": [TABLE_BASE],
    "kd_table/crd.yaml": [TABLE_BASE],
    "kd_table/reviewkd.yaml": [TABLE_BASE],
    "hints/fitnet_pursuhint.yaml": [TABLE_BASE],
    "hints/fitnet_stage_ends.yaml": [TABLE_BASE],
    "hints/at_pursuhint.yaml": [TABLE_BASE],
    "hints/at_stage_ends.yaml": [TABLE_BASE],
}
TABLE_METHODS = ("kd", "dkd", "crd", "reviewkd")


def resolved(name: str, overrides: list[str] | None = None):
    return load_config([IMAGENET / f for f in AFTER[name]] + [IMAGENET / name], overrides)


def test_every_imagenet_config_has_its_base_stated():
    on_disk = {p.relative_to(IMAGENET).as_posix() for p in IMAGENET.rglob("*.yaml")}
    assert on_disk == set(AFTER), "add new files under configs/imagenet/ to AFTER (with the base they follow)"
    for bases in AFTER.values():
        assert all(AFTER[b] == [] for b in bases)  # a file follows one of the two bases directly


@pytest.mark.parametrize("name", sorted(AFTER), ids=lambda n: n.removesuffix(".yaml"))
def test_imagenet_config_validates(name):
    cfg = resolved(name)
    Losses.from_config(cfg.losses)  # every method and parameter exists (load_config checks it too)
    assert cfg.student.model in model_names()
    data = cfg.data
    assert data.name == "imagenet" and data.streaming is True and data.workers == 8
    assert (data.train_split, data.eval_split) == ("train", "val")
    assert data.options == {"image_size": 224, "eval_resize": 256} and data.augment.hflip
    assert cfg.optim.name == "sgd" and (cfg.optim.momentum, cfg.optim.weight_decay) == (0.9, 1e-4)
    assert cfg.optim.lr == 0.1 and data.batch_size == 256
    if AFTER[name] == [BASE] or name == BASE:  # torchvision's ResNet recipe
        assert (cfg.schedule.epochs, cfg.schedule.milestones, cfg.schedule.gamma) == (90, [30, 60], 0.1)
    else:  # the KD table's
        assert (cfg.schedule.epochs, cfg.schedule.milestones, cfg.schedule.gamma) == (100, [30, 60, 90], 0.1)
    if cfg.teacher is not None:
        assert cfg.teacher.model == "resnet34_imagenet" and cfg.student.model == "resnet18_imagenet"


def test_config_names_are_distinct():
    names = [resolved(n).name for n in AFTER if AFTER[n]]
    assert len(names) == len(set(names)) and "run" not in names  # no two recipes write the same run folder


def test_the_two_bases_share_their_data_and_optimizer_and_leave_the_runs_to_recipes():
    imagenet, table = resolved(BASE), resolved(TABLE_BASE)
    assert imagenet.data == table.data and imagenet.optim == table.optim
    for base in (BASE, TABLE_BASE):  # usable as the base config of kdforge ddnn / sftn / compare
        assert not set(read_yaml(IMAGENET / base)) & set(DECIDED)


def test_the_kd_table():
    covered = {Path(n).stem for n in AFTER if n.startswith("kd_table/")} - {"base", "baseline"}
    assert covered == set(TABLE_METHODS) and covered <= set(method_names())
    baseline = resolved("kd_table/baseline.yaml")
    assert baseline.teacher is None and baseline.losses == {"ce": 1.0}
    assert baseline.student.model == "resnet18_imagenet"
    for method in TABLE_METHODS:
        cfg = resolved(f"kd_table/{method}.yaml")
        assert set(cfg.losses) == {"ce", method}
        assert cfg.teacher.checkpoint  # a placeholder path the user replaces (--set teacher.checkpoint=...)
    losses = {m: resolved(f"kd_table/{m}.yaml").losses for m in TABLE_METHODS}
    # the papers' / mdistiller's ImageNet settings (docs/imagenet.md)
    assert losses["kd"] == {"ce": 0.5, "kd": {"weight": 0.5, "T": 1.0}}
    assert losses["dkd"]["dkd"] == {"weight": 1.0, "alpha": 1.0, "beta": 0.5, "T": 1.0, "warmup": 1}
    assert losses["crd"]["ce"] == 1.0 and losses["crd"]["crd"]["weight"] == 0.8
    assert (losses["crd"]["crd"]["nce_k"], losses["crd"]["crd"]["feat_dim"]) == (16384, 128)
    review = losses["reviewkd"]["reviewkd"]
    assert review["warmup"] == 1 and review["student_layers"][-1] == "fc:input"
    assert all(s.endswith(".out_relu:input") for s in review["student_layers"][:-1])  # pre-ReLU, as STU_PREACT


def test_reviewkd_taps_the_student_before_its_relus():
    """The student layers of the ReviewKD config are the pre-activation stage ends kdforge itself finds."""
    from kdforge.methods.default_taps import embedding, stage_ends_preact
    from kdforge.models import build_model

    student = build_model("resnet18_imagenet", num_classes=1000)
    layers = resolved("kd_table/reviewkd.yaml").losses["reviewkd"]["student_layers"]
    assert layers == stage_ends_preact(student) + embedding(student)


def test_pursuhint_configs():
    for method in ("fitnet", "at"):
        for select in ("pursuhint", "stage_ends"):
            cfg = resolved(f"hints/{method}_{select}.yaml")
            assert set(cfg.losses) == {"ce", "kd", method} and cfg.losses["kd"]["T"] == 4.0
            assert cfg.hints.select == ("auto" if select == "pursuhint" else "stage_ends")
            if select == "pursuhint":
                assert (cfg.hints.metric, cfg.hints.k, cfg.hints.probe) == ("cca", 4, 10000)


def test_sftn_and_ddnn_configs():
    sftn = resolved("sftn/resnet34-resnet18.yaml")
    assert sftn.student.model == "resnet34_imagenet" and sftn.teacher is None
    assert sftn.losses["sftn"]["student"] == "resnet18_imagenet" and sftn.losses["sftn"]["detach_teacher"] is False
    ddnn = resolved("ddnn/resnet34_ekd.yaml")
    options = ddnn.student.options
    assert options["full"] == "resnet34_imagenet" and options["subnets"] == ["resnet18_imagenet"]


def test_stage_two_of_sftn_takes_the_teacher_run_folder():
    """The doc's stage-2 command: a KD table file with the SFTN teacher's run folder as teacher.checkpoint."""
    cfg = resolved("kd_table/kd.yaml", ["teacher.checkpoint=runs/imagenet-sftn-teacher-resnet34-resnet18",
                                        "name=imagenet-sftn-resnet34-resnet18-kd"])
    assert cfg.teacher.checkpoint == "runs/imagenet-sftn-teacher-resnet34-resnet18"


def test_print_config_reads_no_data_and_no_weights(tmp_path, capsys):
    """`kdforge train ... --print-config` validates a recipe with neither the ImageNet folder nor the teacher's
    weights present (and the `imagenet` dataset is not looked up)."""
    missing = tmp_path / "nothing-here"
    argv = ["train", str(IMAGENET / TABLE_BASE), str(IMAGENET / "kd_table/dkd.yaml"), "--set", f"data.root={missing}",
            "--set", f"teacher.checkpoint={missing / 'resnet34.pth'}", "--set", f"output_dir={tmp_path / 'runs'}",
            "--print-config"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "name: imagenet\n" in out and "streaming: true" in out and str(missing) in out
    assert not missing.exists() and not (tmp_path / "runs").exists()


def test_a_later_file_can_still_switch_streaming_off():
    """Key-by-key merging: one override changes only that key of the base's data section."""
    base = read_yaml(IMAGENET / BASE)
    cfg = config_from_dict(merge_configs(base, {"data": {"streaming": None, "memory_budget_gb": 200.0}}))
    assert cfg.data.streaming is None and cfg.data.memory_budget_gb == 200.0 and cfg.data.name == "imagenet"


#: one config per method (the kd_table's four, PURSUhInT's selection, SFTN's branches, DDNN), trained for one step
SMOKE = ["kd_table/baseline.yaml", "kd_table/kd.yaml", "kd_table/dkd.yaml", "kd_table/crd.yaml",
         "kd_table/reviewkd.yaml", "hints/at_pursuhint.yaml", "sftn/resnet34-resnet18.yaml", "ddnn/resnet34_ekd.yaml"]


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """A 2-class train/<wnid>/ + val/<wnid>/ folder of small JPEGs and a (random) ResNet-34 state dict in
    torchvision's layout."""
    import numpy as np
    import torch
    from PIL import Image

    from kdforge.models import build_model

    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01440764", "n01443537")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(4):
                pixels = np.random.default_rng(10 * c + i).integers(0, 255, (72, 90, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG")
    weights = root / "resnet34.pth"
    torch.save(build_model("resnet34_imagenet", num_classes=2).state_dict(), weights)
    return root, weights


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:crd. nce_k=16384 is more than")  # 8 training images
@pytest.mark.parametrize("name", SMOKE, ids=lambda n: n.removesuffix(".yaml"))
def test_imagenet_config_trains_a_step(name, tiny_imagenet, tmp_path):
    """The config's methods fit the 224-px zoo models (taps, adapters, branches, hint selection on a streamed
    split): one step on a tiny ImageNet-layout folder, streamed as the config says, at 64 px."""
    from kdforge.engine import train_from_config

    root, weights = tiny_imagenet
    overrides = [f"data.root={root}", "data.options.image_size=64", "data.options.eval_resize=73",
                 "data.batch_size=4", "data.eval_batch_size=8", "data.workers=0", "train.max_steps=1",
                 "schedule.epochs=1", f"output_dir={tmp_path}", "train.progress=false", "train.tensorboard=false",
                 "train.device=cpu"]
    cfg = resolved(name)
    if cfg.teacher is not None:
        overrides.append(f"teacher.checkpoint={weights}")
    if cfg.hints is not None:
        overrides += ["hints.probe=8", "hints.cache=false"]
    cfg = resolved(name, overrides)
    assert cfg.data.name == "imagenet" and cfg.data.streaming is True
    summary = train_from_config(cfg)
    assert summary["steps"] == 1 and summary["dataset"].startswith("imagenet") and 0.0 <= summary["top1_last"] <= 100.0
    record, = [json.loads(line) for line in (Path(tmp_path) / cfg.name / "log.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "epoch"]
    for key in cfg.losses:  # every loss of the config ran, with finite values (its parts: train_ekd/full_ce, ...)
        values = [v for k, v in record.items() if k == f"train_{key}" or k.startswith(f"train_{key}/")]
        assert values and all(math.isfinite(v) for v in values), key
    assert record["train_loss"] > 0
