from pathlib import Path

import pytest

from kdforge.config import load_config
from kdforge.methods import Losses, method_names
from kdforge.models import model_names

ROOT = Path(__file__).parent.parent / "configs"
DIGITS = sorted((ROOT / "digits").glob("*.yaml"))
CIFAR = ROOT / "cifar100"
TEACHERS = sorted((CIFAR / "teachers").glob("*.yaml"))
PAIRS = sorted((CIFAR / "pairs").glob("*.yaml"))
METHODS = sorted((CIFAR / "methods").glob("*.yaml"))


def check(cfg):
    assert cfg.student.model in model_names()
    Losses.from_config(cfg.losses)  # every method and parameter exists


@pytest.mark.parametrize("path", DIGITS + TEACHERS, ids=lambda p: p.stem)
def test_single_configs_validate(path):
    files = [path] if path in DIGITS else [CIFAR / "base.yaml", path]
    check(load_config(files))


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p.stem)
def test_every_pair_with_every_method_validates(pair):
    for method in METHODS:
        cfg = load_config([CIFAR / "base.yaml", pair, method])
        check(cfg)
        assert cfg.data.name == "cifar100" and cfg.schedule.milestones == [150, 180, 210]
        teacher = pair.stem.split("-")[0]
        assert cfg.teacher.checkpoint == f"runs/cifar100-teacher-{teacher}"
        assert (CIFAR / "teachers" / f"{teacher}.yaml").is_file()
        small = cfg.student.model.startswith(("mobilenet", "shufflenet"))
        assert cfg.optim.lr == (0.01 if small else 0.05)


def test_the_cifar100_table_is_complete():
    assert len(PAIRS) == 10
    covered = {m.stem for m in METHODS}
    assert {"kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "nst", "crd", "dkd", "oh"} <= covered
    # a file is a method's name, or the method's name and a variant (crd_kd, kd_ls: logit standardisation)
    assert {stem.split("_")[0] for stem in covered} <= set(method_names())


HINTS = CIFAR / "hints"


def test_pursuhint_configs_validate():
    """resnet110 -> resnet20/32 with FitNet or AT, hints chosen by PURSUhInT or the stage ends."""
    for student in ("resnet20", "resnet32"):
        for method in ("fitnet", "at"):
            for hints in ("pursuhint", "stage_ends"):
                cfg = load_config([CIFAR / "base.yaml", HINTS / f"resnet110-{student}.yaml",
                                   HINTS / f"{method}.yaml", HINTS / f"{hints}.yaml"])
                check(cfg)
                assert cfg.student.model == student and cfg.teacher.checkpoint == "runs/cifar100-teacher-resnet110"
                assert set(cfg.losses) == {"ce", "kd", method} and cfg.losses["kd"]["T"] == 4.0
                assert cfg.hints.select == ("auto" if hints == "pursuhint" else "stage_ends")
                if hints == "pursuhint":
                    assert (cfg.hints.metric, cfg.hints.k, cfg.hints.probe) == ("cca", 3, 10000)


@pytest.mark.parametrize("path", sorted((CIFAR / "sftn").glob("*.yaml")), ids=lambda p: p.stem)
def test_sftn_teacher_configs_validate(path):
    cfg = load_config([CIFAR / "base.yaml", path])
    check(cfg)
    teacher, student = path.stem.split("-")
    assert cfg.student.model == teacher and cfg.losses["sftn"]["student"] == student
    assert cfg.losses["sftn"]["detach_teacher"] is False and cfg.schedule.epochs == 240
