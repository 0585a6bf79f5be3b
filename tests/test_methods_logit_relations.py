"""DIST, WSLD and logit standardisation against their papers' formulas, written out by hand."""

import math

import pytest
import torch

from reference_math import softmax

from kdforge.methods import StepOutputs, build_method
from kdforge.methods.dkd import dkd_parts
from kdforge.methods.kd import kd_loss
from kdforge.methods.logit_ops import standardize


def rows(x):
    return [list(map(float, r)) for r in x.tolist()]


def zscore(row):
    n = len(row)
    mean = sum(row) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (n - 1))  # Bessel, as the authors' torch.std
    return [(v - mean) / (std + 1e-7) for v in row]


def corr(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return num / (den + 1e-8)


def direct_dist(s, t, T):
    ps = [softmax(r, T) for r in rows(s)]
    pt = [softmax(r, T) for r in rows(t)]
    inter = 1 - sum(corr(a, b) for a, b in zip(ps, pt)) / len(ps)
    cols = range(len(ps[0]))
    intra = 1 - sum(corr([r[c] for r in ps], [r[c] for r in pt]) for c in cols) / len(ps[0])
    return T * T * inter, T * T * intra


def direct_wsld(s, t, y, T):
    total = 0.0
    for zs, zt, label in zip(rows(s), rows(t), y.tolist()):
        ce_s = -math.log(softmax(zs, 1.0)[label])
        ce_t = -math.log(softmax(zt, 1.0)[label])
        w = 1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0))
        ps, pt = softmax(zs, T), softmax(zt, T)
        total += w * sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return T * T * total / s.shape[0]


def out(s, t, y=None):
    return StepOutputs(images=torch.zeros(s.shape[0], 1), labels=y, student_logits=s, teacher_logits=t)


def test_standardize_is_the_bessel_z_score_of_each_row():
    z = torch.randn(4, 9, dtype=torch.float64) * 3 + 1
    want = torch.tensor([zscore(r) for r in rows(z)], dtype=torch.float64)
    assert torch.allclose(standardize(z), want, atol=1e-12)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_equals_the_paper_formula(T):
    s, t = torch.randn(6, 5), torch.randn(6, 5) * 2
    parts = build_method("dist", {"beta": 0.5, "gamma": 3.0, "T": T})(out(s, t))
    inter, intra = direct_dist(s, t, T)
    assert parts["inter"].item() == pytest.approx(0.5 * inter, rel=1e-4, abs=1e-6)
    assert parts["intra"].item() == pytest.approx(3.0 * intra, rel=1e-4, abs=1e-6)


def test_dist_is_zero_for_the_teachers_own_logits_and_blind_to_logit_shifts():
    t = torch.randn(5, 7) * 2
    same = build_method("dist")(out(t.clone(), t))
    # float32 rounding leaves 1 - rho ~ 1e-6, times T^2 = 16; a term of a wrong student is ~1
    assert same["inter"].item() == pytest.approx(0.0, abs=1e-4) and same["intra"].item() == pytest.approx(0.0, abs=1e-4)
    s = torch.randn(5, 7)
    shifted = build_method("dist")(out(s + torch.randn(5, 1) * 10, t))  # softmax ignores a per-row constant
    plain = build_method("dist")(out(s, t))
    assert shifted["inter"].item() == pytest.approx(plain["inter"].item(), rel=1e-4)
    assert shifted["intra"].item() == pytest.approx(plain["intra"].item(), rel=1e-4)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_wsld_equals_the_paper_formula(T):
    s, t = torch.randn(7, 5), torch.randn(7, 5) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    got = build_method("wsld", {"T": T})(out(s, t, y)).item()
    assert got == pytest.approx(direct_wsld(s, t, y, T), rel=1e-4, abs=1e-6)


def test_wsld_weights_favour_images_the_student_gets_wrong():
    """An image the student gets far worse than the teacher weighs more than one it gets as well."""
    t = torch.tensor([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 4.0, 0.0], [4.0, 0.0, 0.0]])
    y = torch.tensor([0, 0])
    from kdforge.methods.wsld import wsld_weights

    w = wsld_weights(s, t, y)
    assert w[0] > 0.99 and w[1] == pytest.approx(1 - math.exp(-1), abs=1e-5)  # CE_s / CE_t = 1 for the second


def test_standardized_kd_and_dkd_are_kd_and_dkd_of_z_scored_logits():
    s, t = torch.randn(6, 5) * 3, torch.randn(6, 5) * 2
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    zs = torch.tensor([zscore(r) for r in rows(s)])
    zt = torch.tensor([zscore(r) for r in rows(t)])
    assert kd_loss(s, t, 2.0, standardized=True).item() == pytest.approx(kd_loss(zs, zt, 2.0).item(), rel=1e-4)
    for got, want in zip(dkd_parts(s, t, y, 2.0, standardized=True), dkd_parts(zs, zt, y, 2.0)):
        assert got.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "wsld"])
def test_standardized_methods_ignore_each_models_logit_scale_and_offset(name):
    """The point of logit standardisation: a student whose logits are an affine map (a > 0) of the right ones
    is not penalised; without it the same student is."""
    params = {"standardize": True, **({"warmup": 0} if name == "dkd" else {})}
    method = build_method(name, params)
    t, s = torch.randn(6, 5) * 2, torch.randn(6, 5)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    a, b = torch.rand(6, 1) * 3 + 0.5, torch.randn(6, 1) * 5

    def total(student, teacher):
        got = method(out(student, teacher, y))
        return float(sum(got.values()) if isinstance(got, dict) else got)

    if name != "wsld":  # WSLD's weights compare the raw logits' CE (as the paper), so only its soft term is invariant
        assert total(a * s + b, t) == pytest.approx(total(s, t), rel=1e-3, abs=1e-5)
    assert total(s, a * t + b) == pytest.approx(total(s, t), rel=1e-3, abs=1e-5) or name == "wsld"
    plain = build_method(name, {k: v for k, v in params.items() if k != "standardize"})
    got = plain(out(a * s + b, t, y))
    raw = float(sum(got.values()) if isinstance(got, dict) else got)
    got = plain(out(s, t, y))
    assert abs(raw - float(sum(got.values()) if isinstance(got, dict) else got)) > 1e-3


@pytest.mark.parametrize("name, params", [("dist", {}), ("wsld", {}), ("kd", {"standardize": True}),
                                          ("dkd", {"standardize": True, "warmup": 0})])
def test_logit_relations_train_only_the_student(name, params):
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 4, requires_grad=True)
    got = build_method(name, params)(out(s, t, torch.tensor([0, 1, 2, 3, 0])))
    (sum(got.values()) if isinstance(got, dict) else got).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_bad_parameters_are_refused():
    for name, params in (("dist", {"T": 0}), ("dist", {"beta": -1}), ("wsld", {"T": -2.0})):
        with pytest.raises(Exception, match=name):
            build_method(name, params)


def test_tfkd_is_the_kl_from_the_papers_virtual_teacher():
    s, y, T, a = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2]), 20.0, 0.99
    got = build_method("tfkd", {"T": T, "correct_prob": a})(StepOutputs(images=torch.zeros(5, 1), labels=y,
                                                                         student_logits=s, teacher_logits=None))
    total = 0.0
    for zs, label in zip(rows(s), y.tolist()):
        u = [a if k == label else (1 - a) / 3 for k in range(4)]
        q, p = softmax(u, T), softmax(zs, 1.0)  # the softmax of the probabilities u / T, student at T = 1
        assert max(range(4), key=lambda k: q[k]) == label
        total += sum(qk * math.log(qk / pk) for qk, pk in zip(q, p))
    assert got.item() == pytest.approx(total / 5, rel=1e-4)
    # the authors' element-mean KL (over batch x classes) is ours divided by the number of classes
    from kdforge.methods.tfkd import virtual_teacher

    theirs = torch.nn.KLDivLoss()(torch.log_softmax(s, 1), virtual_teacher(y, 4, a, T))
    assert got.item() == pytest.approx(4 * theirs.item(), rel=1e-5)


def test_tfkd_needs_no_teacher_and_sends_gradients_to_the_student():
    s = torch.randn(3, 5, requires_grad=True)
    method = build_method("tfkd")
    assert not method.needs_teacher
    method(StepOutputs(images=torch.zeros(3, 1), labels=torch.tensor([1, 2, 3]), student_logits=s,
                       teacher_logits=None)).backward()
    assert s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="correct_prob"):
        build_method("tfkd", {"correct_prob": 1.0})


def test_tfkd_alone_teaches_the_classes_with_the_virtual_teachers_low_confidence(tmp_path):
    """No CE, no teacher model: the virtual teacher's peak at the label teaches the classes, and its flat
    distribution (at T = 1 and 10 classes: 0.23 at the label) keeps the student unconfident, unlike CE. (At the
    usual T = 20 the peak is 0.104 against 0.0996, too faint to learn from in 3 epochs: it regularises CE.)"""
    from kdforge.config import config_from_dict
    from kdforge.data import load_dataset
    from kdforge.data.augment import normalize
    from kdforge.engine import train_from_config
    from kdforge.engine.checkpoint import load_model

    cfg = config_from_dict({"name": "tfkd", "output_dir": str(tmp_path), "seed": 0, "student": {"model": "resnet8"},
                            "losses": {"tfkd": {"weight": 5.0, "T": 1.0}}, "schedule": {"name": "cosine", "epochs": 3, "warmup_epochs": 0.5},
                            "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}})
    summary = train_from_config(cfg)
    assert summary["top1_last"] > 30  # chance is 10 % (47.5 % measured, AMD EPYC)
    model, _ = load_model(tmp_path / "tfkd", "last")
    test = load_dataset("digits", None, "test")
    with torch.no_grad():
        images = normalize(test.images[:200], test.mean, test.std)
        confidence = torch.softmax(model.eval()(images), 1).max(1).values.mean()
    assert confidence < 0.4, confidence
