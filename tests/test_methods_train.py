"""Every method distils a real student on the built-in digits, and learns what its teacher shows.

The digits are used at 16x16 (`data.options.image_size`), a quarter of the work of the default 32x32; the
margins below were measured there (`pytest -rP` prints each method's pairing for re-measuring).

"The loss falls" holds for a method that ignores its teacher too (CE trains the student, the
method's own parameters fit anything). What only a working method does: after training, its
term on a fixed batch is far lower with each image's own teacher outputs than with another
image's (the teacher's batch rolled by one image). A method that took the teacher's features
from the wrong image, matched noise or never reached the student has no such gap.
"""

import json
from dataclasses import dataclass

import pytest
import torch

import kdforge.engine.trainer as trainer_module
from kdforge.config import config_from_dict
from kdforge.data import TensorLoader
from kdforge.engine import train_from_config
from kdforge.engine.hooks import PretrainStageHook
from kdforge.methods import method_class, method_names

#: every method that distils a CNN student from a teacher (DeiT's student is a transformer: tests/test_vit.py)
DISTILL_METHODS = [m for m in method_names()
                   if method_class(m).needs_teacher and not method_class(m).student_requirement]
#: parameters that make a 4-epoch run on 1,437 images meaningful (the defaults suit 240-epoch schedules)
SHORT_RUN = {
    "dkd": {"warmup": 1},
    "reviewkd": {"warmup": 1},
    "fsp": {"pretrain_epochs": 2},
    "sskd": {"pretrain_epochs": 1},
    # VID's mean regressor learns at a rate scaled by 1 / variance: from the default 5.0 it barely moves in
    # 4 epochs (term -6 %, no pairing gap, measured); from 0.1 it learns the pairing within them
    "vid": {"init_variance": 0.1},
}
#: methods whose logits carry the classes: they must teach them without any label (CE weight 0); SimKD's
#: student classifies with the teacher's head, so aligning the maps teaches the classes
LOGIT_METHODS = ["kd", "dkd", "netgraft", "simkd"]
#: the largest term(own teacher) / term(another image's teacher) a trained method may keep; measured
#: after 4 epochs on 16x16 digits (AMD EPYC, 2026-12-02): 0.02-0.30 for most, 0.36 mlkd, 0.39 ft, 0.40 srd,
#: 0.51 oh, 0.62 ab; vid (0.72) and the special cases below have their own rules
PAIRING_RATIO = 0.7
#: VID's ratio after 4 epochs at 16x16 (0.72 measured; 0.55 at 32x32) is above PAIRING_RATIO; a VID that
#: regresses noise stays at 1 (the mutation `vid-teacher-is-noise`)
VID_PAIRING_RATIO = 0.85
#: the smallest relative fall of a method's term from the first epoch to the last (measured 0.4-0.95)
TERM_FALL = 0.2
COMMON = {
    "data": {"options": {"image_size": 16}, "augment": {"crop_padding": 2, "hflip": False}},
    "schedule": {"name": "cosine", "epochs": 4, "warmup_epochs": 0.5},
    "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32", "log_every": 10},
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = config_from_dict({**COMMON, "name": "teacher", "output_dir": str(out), "student": {"model": "resnet14"},
                            "schedule": {"name": "cosine", "epochs": 6, "warmup_epochs": 0.5}})
    summary = train_from_config(cfg)
    assert summary["top1_last"] > 90
    return out / "teacher"


def losses_for(name, ce=True):
    weight = getattr(method_class(name), "typical_weight", 1.0)
    if name == "kd":
        return {"ce": 0.1 if ce else 0.0, "kd": {"weight": 0.9}}
    return {"ce": 1.0 if ce else 0.0, name: {"weight": weight, **SHORT_RUN.get(name, {})}}


@dataclass
class Pairing:
    """A method's term on the first 256 training images (no augmentation, student in eval mode),
    with each image's own teacher outputs and with those of the image before it in the batch."""

    own: float
    other: float

    @property
    def ratio(self) -> float:
        return self.own / self.other


def measure_pairing(trainer, key: str, pretrain: bool) -> Pairing:
    loader = TensorLoader(trainer.train_data, 256, shuffle=False, drop_last=False, augment=None, seed=0,
                          device=torch.device("cpu"), with_indices=True)
    images, labels, indices = next(iter(loader))

    def term(rolled: bool) -> float:
        hook = (trainer.teacher.register_forward_pre_hook(lambda module, args: (torch.roll(args[0], 1, 0),))
                if rolled else None)
        training = trainer.student.training
        trainer.student.eval()
        try:
            with torch.no_grad():
                out = trainer.forward(images, labels, indices)
                method = trainer.losses.methods[key]
                out = out.for_method(key)  # with the method's own extra view (SSKD's rotations)
                value = method.pretrain_loss(out) if pretrain else method(out)
        finally:
            trainer.student.train(training)
            if hook is not None:
                hook.remove()
        return float(sum(value.values()) if isinstance(value, dict) else value)

    return Pairing(term(False), term(True))


@dataclass
class Probe:
    """The pairing of `key` before and after what trains it: the run, or for a method of weight 0
    (AB: an initialisation) its pre-training stage."""

    key: str
    before: Pairing | None = None
    after: Pairing | None = None


@pytest.fixture
def probe(monkeypatch):
    probes: list[Probe] = []
    fit, run_stage = trainer_module.Trainer.fit, PretrainStageHook.run_stage

    def pretrained_only(trainer, key):
        return trainer.losses.weights[key] == 0 and trainer.losses.methods[key].pretrain_epochs > 0

    def probed_fit(self, *args, **kwargs):
        self.prepare()
        p = probes[-1]
        if not pretrained_only(self, p.key):
            p.before = measure_pairing(self, p.key, pretrain=False)
        summary = fit(self, *args, **kwargs)
        if not pretrained_only(self, p.key):
            p.after = measure_pairing(self, p.key, pretrain=False)
        return summary

    def probed_pretrain(hook, trainer):
        p = probes[-1]
        if pretrained_only(trainer, p.key):
            p.before = measure_pairing(trainer, p.key, pretrain=True)
        run_stage(hook, trainer)
        if pretrained_only(trainer, p.key):
            p.after = measure_pairing(trainer, p.key, pretrain=True)

    monkeypatch.setattr(trainer_module.Trainer, "fit", probed_fit)
    monkeypatch.setattr(PretrainStageHook, "run_stage", probed_pretrain)

    def start(key):
        probes.append(Probe(key))
        return probes[-1]

    return start


def train(name, teacher_dir, out, ce=True):
    cfg = config_from_dict({**COMMON, "name": name, "output_dir": str(out), "seed": 1,
                            "student": {"model": "resnet8"}, "teacher": {"checkpoint": str(teacher_dir)},
                            "losses": losses_for(name, ce)})
    summary = train_from_config(cfg)
    log = [json.loads(line) for line in (out / name / "log.jsonl").read_text().splitlines()]
    return cfg, summary, log


def term_per_epoch(name, log, weight):
    """The method's logged term per epoch; for a weight-0 method, its pre-training loss per epoch."""
    if weight == 0:
        return [r["loss"] for r in log if r["kind"] == "pretrain" and r["method"] == name]
    epochs = [r for r in log if r["kind"] == "epoch"]
    parts = [k for k in epochs[0] if k == f"train_{name}" or k.startswith(f"train_{name}/")]
    assert parts, f"no logged loss value for {name}"
    return [sum(e[k] for k in parts) for e in epochs]


@pytest.mark.parametrize("name", DISTILL_METHODS)
def test_method_trains_a_student_to_match_its_own_teacher(name, teacher_dir, tmp_path, probe):
    p = probe(name)
    cfg, summary, log = train(name, teacher_dir, tmp_path)
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in epochs)
    weight = cfg.losses[name]["weight"]
    term = term_per_epoch(name, log, weight)
    assert len(term) >= 2, term
    assert p.before is not None and p.after is not None
    print(f"pairing {name}: before {p.before}, after {p.after} (ratio {p.after.ratio:.3f}); term {term}")
    if name == "crd":
        # CRD's positives come from a memory bank of past embeddings and its NCE term over all 1,436 other
        # images is dominated by the negatives: after 4 epochs its own/other ratio is 0.96 (0.99 at the
        # start). Here the gap must widen; what CRD must learn is shown directly by
        # test_methods_contrastive.py::test_crd_heads_learn_to_pair_each_sample_with_its_own_teacher_embedding
        assert p.after.other - p.after.own > 1.5 * (p.before.other - p.before.own), (p.before, p.after)
    elif name == "wsld":
        # WSLD weighs each image by 1 - exp(-CE_s / CE_t): another image's teacher is wrong on most images, so
        # its CE_t is large and its term is weighted down; own/other stays near 1 by design (1.10 measured
        # after 4 epochs at 16x16, 0.92 at 32x32, AMD EPYC), from 3.3 at the start (own 7.85 vs other 2.36: the
        # own term's weights are ~1). What must hold: relative to where they started, the own term fell far
        # more than the other (measured 30x vs 10x), and the term falls. The weights are tested directly in
        # test_methods_logit_relations.py.
        assert p.before.own > p.before.other and p.after.ratio < 0.5 * p.before.ratio, (p.before, p.after)
        assert term[-1] < (1 - TERM_FALL) * term[0], term
    elif name == "kdsvd":
        # the dominant singular vector over the channels is nearly the same for every image: own and other start
        # equal (0.4996 vs 0.5007 at 16x16) and after 4 epochs own/other is 0.886 (0.956 at 32x32; AMD EPYC). The
        # term falls within the first epoch (epoch means 0.177, 0.179, ... at 16x16), so the fall is measured on
        # the probe batch (0.500 -> 0.177). The own teacher must end closer than another image's, by more than it started.
        assert p.after.ratio < 0.99 and p.after.ratio < p.before.ratio - 0.02, (p.before, p.after)
        assert p.after.own < 0.5 * p.before.own, (p.before, p.after)
    elif name in ("ickd", "fsp"):
        # channel Gram matrices (ICKD's correlations, FSP's flows) are mostly the same for every image (the same
        # channels fire together): own and other start equal (16x16: ICKD 1.881 vs 1.884, FSP 2.2287 vs 2.2309) and
        # end at own/other 0.88 (ICKD, 4 epochs) and 0.85 (FSP, 2 initialisation epochs) on AMD EPYC, the
        # image-specific part being a fifth or less of the term. The gap must open, and the term fall.
        assert p.after.other - p.after.own > 0.05 * p.after.other, (p.before, p.after)
        assert p.after.other - p.after.own > 5 * abs(p.before.other - p.before.own), (p.before, p.after)
        assert term[-1] < (1 - TERM_FALL) * term[0], term
    else:
        assert p.after.ratio < (VID_PAIRING_RATIO if name == "vid" else PAIRING_RATIO), (p.before, p.after)
        assert p.after.ratio < 0.8 * p.before.ratio, (p.before, p.after)  # learned, not there from the start
        assert term[-1] < (1 - TERM_FALL) * term[0], term
    assert summary["top1_last"] > 50  # chance is 10 %; CE alone reaches about 75 % here


@pytest.mark.parametrize("name", LOGIT_METHODS)
def test_logit_method_teaches_the_classes_without_labels(name, teacher_dir, tmp_path, probe):
    """CE weight 0: the teacher's logits alone must teach the classes (chance is 10 %)."""
    p = probe(name)
    _, summary, _ = train(name, teacher_dir, tmp_path, ce=False)
    assert summary["top1_last"] > 30
    assert p.after.ratio < PAIRING_RATIO, (p.before, p.after)


def test_kd_and_feature_methods_compose(teacher_dir, tmp_path):
    """One run with several methods logs each named loss separately."""
    feature = "at" if "at" in method_names() else None
    losses = {"ce": 1.0, "kd": {"weight": 0.9, "T": 4.0}}
    if feature:
        losses[feature] = method_class(feature).typical_weight
    cfg = config_from_dict({**COMMON, "name": "combo", "output_dir": str(tmp_path), "student": {"model": "resnet8"},
                            "teacher": {"checkpoint": str(teacher_dir)}, "losses": losses,
                            "schedule": {"name": "cosine", "epochs": 1}, "train": {**COMMON["train"], "max_steps": 12}})
    train_from_config(cfg)
    steps = [json.loads(l) for l in (tmp_path / "combo" / "log.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "step"]
    assert {"ce", "kd", *( [feature] if feature else [])} <= set(steps[0])
    assert steps[0]["loss"] == pytest.approx(sum(v for k, v in steps[0].items() if k in losses), rel=1e-5)


def test_mlkd_two_views_train_and_their_strong_terms_fall(teacher_dir, tmp_path):
    """MLKD's two-view form (`strong_view: true`) through the engine: the strong copy runs with the batch, and
    both of its terms fall while the student learns."""
    cfg = config_from_dict({**COMMON, "name": "mlkd2", "output_dir": str(tmp_path), "student": {"model": "resnet8"},
                            "teacher": {"checkpoint": str(teacher_dir)},
                            "losses": {"ce": 0.1, "mlkd": {"weight": 0.9, "strong_view": True}}})
    summary = train_from_config(cfg)
    epochs = [json.loads(l) for l in (tmp_path / "mlkd2" / "log.jsonl").read_text().splitlines()
              if json.loads(l)["kind"] == "epoch"]
    for part in ("strong_instance", "instance"):  # measured: x0.33 and x0.28 over the 4 epochs (AMD EPYC)
        assert epochs[-1][f"train_mlkd/{part}"] < (1 - TERM_FALL) * epochs[0][f"train_mlkd/{part}"], part
    # the strong copies of 16x16 digits (RandAugment + Cutout up to half the side) stay hard: their CE fell by
    # x0.80 (AMD EPYC), at TERM_FALL's edge; it must fall by a tenth
    assert epochs[-1]["train_mlkd/strong_ce"] < 0.9 * epochs[0]["train_mlkd/strong_ce"]
    assert summary["top1_last"] > 50  # chance is 10 %
