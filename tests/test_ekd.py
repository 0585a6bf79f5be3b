"""EKD: the loss against a direct computation on exported plain models, gradient routing, the engine run."""

import copy
import json

import pytest
import torch

from kdforge.config import config_from_dict
from kdforge.data import Augment, TensorLoader
from kdforge.engine import Trainer, build_zoo_model, load_checkpoint, load_model
from kdforge.errors import ConfigError
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, StepOutputs, build_method
from kdforge.models import build_model, count_macs, count_parameters
from kdforge.models.dynamic import build_ddnn
from kdforge.models.resnet import BasicBlock, ResNet

from test_ddnn import randomise_paths  # noqa: E402  (tests/ is on the path: same helper, one copy)

BN_MODES = ["shared", "switchable", "recalibrate"]
WEIGHTS = {"full_ce": 0.5, "lambda_ce": 0.7, "lambda_kl": 1.3, "lambda_at": 2.5, "T": 3.0}


def make_net(bn="switchable", subnets=("resnet14", "resnet8"), full="resnet20"):
    torch.manual_seed(0)
    net = build_ddnn(full, list(subnets), num_classes=10, bn=bn)
    randomise_paths(net)
    return net


def plain_model(net, name, in_channels=3):
    """`name`'s plain architecture (a zoo model, or a ResNet with its depth list), with its exported weights."""
    classes = net.full.fc.out_features
    zoo = net.plain_names[name]
    model = (build_model(zoo, num_classes=classes, in_channels=in_channels) if zoo is not None else
             ResNet(BasicBlock, net.depths(name), (16, 32, 64), stem_width=16, num_classes=classes,
                    in_channels=in_channels))
    model.load_state_dict(net.subnet_state_dict(name))
    return model


def bound(net, params, x, y):
    """The EKD method bound to `net`, and its StepOutputs of one forward of `net` on `x`."""
    method = build_method("ekd", params)
    method.bind(net, None)
    with FeatureTaps(net, method.student_layers) as taps:
        logits, feats = taps(x)
    return method, StepOutputs(x, y, logits, student_features=dict(feats), student=net)


def plain_runs(net, x):
    """{path: (logits, [stage outputs])} of every path's exported plain model (eval mode)."""
    runs = {}
    for name in net.names:
        plain = plain_model(net, name).eval()
        stages = []
        handles = [plain.get_submodule(s).register_forward_hook(lambda m, a, o: stages.append(o))
                   for s in plain.stage_names]
        with torch.no_grad():
            runs[name] = (plain(x), stages)
        for h in handles:
            h.remove()
    return runs


def direct_losses(runs, full, subs, y, w, attention="at"):
    """The spec's loss written out term by term."""
    def cross_entropy(z):
        return -torch.log_softmax(z, 1)[torch.arange(len(y)), y].mean()

    def attention_of(f):
        a = (f * f).mean(dim=1).flatten(1)  # channel mean of F^2, (N, H*W)
        if attention == "at":
            return a / torch.sqrt((a * a).sum(dim=1, keepdim=True))
        e = torch.exp(a - a.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)

    z_t, f_t = runs[full]
    T = w["T"]
    p_t = torch.softmax(z_t / T, 1)
    out = {"full_ce": w["full_ce"] * cross_entropy(z_t)}
    for k in subs:
        z, f = runs[k]
        out[f"{k}/ce"] = w["lambda_ce"] * cross_entropy(z)
        kl = (p_t * (torch.log(p_t) - torch.log_softmax(z / T, 1))).sum(1).mean()
        out[f"{k}/kl"] = w["lambda_kl"] * T * T * kl
        out[f"{k}/at"] = w["lambda_at"] * sum(((attention_of(a) - attention_of(b)) ** 2).sum(1).mean()
                                              for a, b in zip(f_t, f))
    return out


# ---------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("attention", ["at", "softmax"])
@pytest.mark.parametrize("bn", BN_MODES)
def test_loss_equals_the_formula_on_the_exported_models(bn, attention):
    net = make_net(bn, subnets=("resnet14", "resnet8", [3, 1, 2])).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    method, out = bound(net, {**WEIGHTS, "attention": attention}, x, y)
    with torch.no_grad():
        got = method(out)
    subs = ["resnet14", "d3-1-2", "resnet8"]  # deepest first
    assert method.subnets == subs
    want = direct_losses(plain_runs(net, x), "resnet20", subs, y, WEIGHTS, attention)
    assert list(got) == list(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert all(want[k] > 0 for k in want)  # every term really measures something
    heads = method.eval_heads(out)
    assert list(heads) == subs
    with torch.no_grad():
        for name, z in heads.items():
            assert torch.equal(z, net(x, name))


def test_chosen_subnets_and_zero_weights_drop_terms():
    net = make_net("shared").eval()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    method, out = bound(net, {"subnets": ["resnet8"], "full_ce": 0.0, "lambda_at": 0.0}, x, y)
    with torch.no_grad():
        got = method(out)
    assert list(got) == ["resnet8/ce", "resnet8/kl"]
    want = direct_losses(plain_runs(net, x), "resnet20", ["resnet8"], y, {**WEIGHTS, "lambda_ce": 1.0,
                                                                           "lambda_kl": 1.0, "T": 1.0})
    for key in got:  # the defaults: lambda_ce = lambda_kl = 1, T = 1
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert method.student_layers == ["full.layer1", "full.layer2", "full.layer3", "full.layer1.0"]


# ---------------------------------------------------------------------------- gradients
def assert_grads_close(got, want, name):
    """Two fp32 backward passes that sum in another order: their difference scales with the tensor's
    largest entry (up to 2.4e-6 of it here, at entries far smaller), so the absolute tolerance does too;
    2e-5 leaves 10x for other CPUs' kernels, while a missing, doubled or leaked term moves whole gradients."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * want.abs().max().item(), msg=name)


def grads_of(net):
    return {n: None if p.grad is None else p.grad.clone() for n, p in net.named_parameters()}


def method_grads(net, params, x, y):
    net.zero_grad(set_to_none=True)
    method, out = bound(net, params, x, y)
    sum(method(out).values()).backward()
    return grads_of(net)


def test_kl_alone_treats_the_full_logits_as_constants():
    net = make_net("switchable").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    T = 2.0
    got = method_grads(net, {"full_ce": 0.0, "lambda_ce": 0.0, "lambda_at": 0.0, "lambda_kl": 1.5, "T": T}, x, y)
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        target = net(x)  # precomputed: a constant
    p_t = torch.softmax(target / T, 1)
    loss = sum(1.5 * T * T * (p_t * (torch.log(p_t) - torch.log_softmax(net(x, k) / T, 1))).sum(1).mean()
               for k in ("resnet14", "resnet8"))
    loss.backward()
    want = grads_of(net)
    for name in want:
        if want[name] is None:
            assert got[name] is None, name
        else:
            assert_grads_close(got[name], want[name], name)
    full_only = [n for n in got if n.startswith(("full.layer2.2.", "full.layer3.2."))]
    assert full_only and all(got[n] is None for n in full_only)  # blocks only the full net uses
    assert got["full.fc.weight"].abs().sum() > 0 and got["full.conv1.weight"].abs().sum() > 0
    assert got["full.layer3.0.bn1.paths.resnet8.weight"].abs().sum() > 0
    assert got["full.layer3.0.bn1.paths.resnet20.weight"] is None  # the full path's own BN: not trained by KL


def test_attention_alone_leaves_the_classifier_alone():
    net = make_net("recalibrate").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    got = method_grads(net, {"full_ce": 0.0, "lambda_ce": 0.0, "lambda_kl": 0.0, "lambda_at": 1.0}, x, y)
    assert got["full.fc.weight"] is None and got["full.fc.bias"] is None
    assert all(got[n] is None for n in got if n.startswith("full.layer3.2."))
    assert got["full.conv1.weight"].abs().sum() > 0 and got["full.layer3.1.conv2.weight"].abs().sum() > 0


def test_one_backward_of_the_sum_equals_the_sum_of_separate_backwards():
    net = make_net("switchable").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    method, out = bound(net, WEIGHTS, x, y)
    losses = method(out)
    params = dict(net.named_parameters())
    separate = {n: torch.zeros_like(p) for n, p in params.items()}
    for term in losses.values():
        net.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        for n, p in params.items():
            if p.grad is not None:
                separate[n] += p.grad
    net.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    for n, p in params.items():
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        assert_grads_close(got, separate[n], n)
    assert params["full.layer3.2.conv1.weight"].grad.abs().sum() > 0  # full_ce reaches the full-only blocks


# ---------------------------------------------------------------------------- precision, layout, compile
def test_bf16_autocast_and_channels_last():
    net = make_net("recalibrate").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    reference = copy.deepcopy(net)
    method, out = bound(reference, WEIGHTS, x, y)
    want = {k: v.detach() for k, v in method(out).items()}
    assert set(want) == {"full_ce", *(f"{n}/{term}" for n in ("resnet14", "resnet8") for term in ("ce", "kl", "at"))}

    net.to(memory_format=torch.channels_last)
    method, out = bound(net, WEIGHTS, x.to(memory_format=torch.channels_last), y)
    got = method(out)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        method, out = bound(net, WEIGHTS, x.to(memory_format=torch.channels_last), y)
        got = method(out)
    net.zero_grad(set_to_none=True)
    sum(got.values()).backward()
    assert out.student_logits.dtype == torch.bfloat16
    # per term: bf16 rounding moves each by well under 2 % here; 15 % with a floor of 1e-3 (the smallest
    # term, a KL, is about 0.015) still tells a lost or halved term from rounding
    assert set(got) == set(want)
    for key in want:
        assert got[key].dtype == torch.float32, key
        assert want[key] > 10 * 1e-3, key
        torch.testing.assert_close(got[key], want[key], rtol=0.15, atol=1e-3, msg=key)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_compiled_full_forward_gives_the_same_losses():
    net = make_net("switchable").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    method = build_method("ekd", WEIGHTS)
    method.bind(net, None)
    runs = {}
    for kind in ("eager", "compiled"):
        runner = torch.compile(net, backend="eager") if kind == "compiled" else None
        with FeatureTaps(net, method.student_layers, runner=runner) as taps:
            logits, feats = taps(x)
        runs[kind] = {k: v.detach() for k, v in
                      method(StepOutputs(x, y, logits, student_features=dict(feats), student=net)).items()}
    for key in runs["eager"]:
        torch.testing.assert_close(runs["compiled"][key], runs["eager"][key], rtol=1e-5, atol=1e-6, msg=key)


# ---------------------------------------------------------------------------- errors
def test_config_errors_say_why():
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 10, (2,))
    with pytest.raises(ConfigError, match="student is a ResNet: set student.model: ddnn"):
        build_method("ekd").bind(build_model("resnet8", num_classes=10), None)
    net = build_ddnn("resnet14", ["resnet8"], num_classes=10)
    with pytest.raises(ConfigError, match=r"losses.ekd.subnets: \['resnet20'\]; the student holds resnet8"):
        build_method("ekd", {"subnets": ["resnet20"]}).bind(net, None)
    with pytest.raises(ConfigError, match="none given"):
        build_method("ekd", {"subnets": []}).bind(net, None)
    for params, message in (({"T": 0}, "temperature"), ({"lambda_kl": -1}, "lambda_kl must be >= 0"),
                            ({"attention": "sad"}, "attention"), ({"lmbda_kl": 1}, "no parameter 'lmbda_kl'"),
                            ({"full_ce": 0, "lambda_ce": 0, "lambda_kl": 0, "lambda_at": 0}, "no loss")):
        with pytest.raises(ConfigError, match=message):
            build_method("ekd", params)
    method, out = bound(net, {}, x, y)
    assert set(method(out)) == {"full_ce", "resnet8/ce", "resnet8/kl", "resnet8/at"}


# ---------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def digits(digits_head):
    return digits_head(32, 40)


SUBNETS = ["resnet8", [2, 1, 1]]


def make_trainer(tmp_path, name, digits):
    cfg = config_from_dict({
        "name": name, "seed": 5, "output_dir": str(tmp_path),
        "student": {"model": "ddnn", "options": {"full": "resnet14", "subnets": SUBNETS, "bn": "recalibrate",
                                                 "recalibrate_batches": 2}},
        "data": {"batch_size": 16, "eval_batch_size": 16, "augment": {"crop_padding": 2, "hflip": True}},
        "optim": {"lr": 0.05}, "schedule": {"name": "cosine", "epochs": 2},
        "losses": {"ekd": {"weight": 1.0, "T": 3.0}},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "log_every": 2},
    })
    torch.manual_seed(cfg.seed)
    student = build_zoo_model(cfg.student, 10, 1, "student")
    return Trainer(student, Losses.from_config(cfg.losses), *digits, config=cfg, run_dir=tmp_path / name)


def top1(net, loader, path):
    hits = count = 0
    with torch.no_grad():
        for images, labels in loader:
            hits += int((net(images, path).argmax(1) == labels).sum())
            count += len(labels)
    return 100.0 * hits / count


def test_engine_run_reports_exports_recalibrates_and_resumes(tmp_path, digits, monkeypatch):
    import kdforge.engine.bn_recalibration as recal

    calls, real = [], recal.recalibrate_bn

    def recording(model, batches, forwards=None):
        batches = [b.clone() for b in batches]
        calls.append({"state": copy.deepcopy(model.state_dict()), "batches": batches, "forwards": len(forwards)})
        return real(model, batches, forwards)

    monkeypatch.setattr(recal, "recalibrate_bn", recording)
    trainer = make_trainer(tmp_path, "full", digits)
    summary = trainer.fit()
    net = trainer.student
    names = ["resnet14", "d2-1-1", "resnet8"]  # deepest first
    assert net.names == names

    # every evaluation reports every sub-net; the numbers are those of the final weights
    epochs = [r for r in map(json.loads, (tmp_path / "full" / "log.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        assert {"eval_top1", "eval_top1/ekd/resnet8", "eval_top1/ekd/d2-1-1", "train_ekd/full_ce",
                "train_ekd/resnet8/kl", "train_ekd/d2-1-1/at"} <= set(record)
    loaded, _ = load_model(tmp_path / "full", "last")
    loaded.eval()
    loader = TensorLoader(digits[1], 16, shuffle=False, drop_last=False, device="cpu", augment=None, seed=0)
    assert top1(loaded, loader, None) == pytest.approx(epochs[-1]["eval_top1"], abs=1e-9)
    for name in names[1:]:
        assert top1(loaded, loader, name) == pytest.approx(epochs[-1][f"eval_top1/ekd/{name}"], abs=1e-9)

    # the summary's paths: the plain models' parameters and MACs at the data's size
    assert list(summary["paths"]) == names
    assert summary["paths"]["resnet14"]["top1_last"] == epochs[-1]["eval_top1"]
    for name in names:
        plain = plain_model(loaded, name, in_channels=1)
        assert summary["paths"][name]["params"] == count_parameters(plain), name
        assert summary["paths"][name]["macs"] == count_macs(plain, 32, 1), name
        if name != "resnet14":
            assert summary["paths"][name]["top1_last"] == epochs[-1][f"eval_top1/ekd/{name}"]
        # the run's final weights export exactly
        plain.eval()
        x = torch.randn(3, 1, 32, 32)
        with torch.no_grad():
            assert torch.equal(plain(x), loaded(x, name))

    # BN recalibration: once, after the last epoch, over the first 2 batches of a fixed augmented epoch
    assert len(calls) == 1 and len(calls[0]["batches"]) == 2 and calls[0]["forwards"] == 3
    expected = TensorLoader(digits[0], 16, shuffle=True, drop_last=True, device="cpu",
                            augment=Augment(crop_padding=2, hflip=True), seed=5, with_indices=True)
    expected.set_epoch(2)
    for got, (images, _, _) in zip(calls[0]["batches"], expected):
        assert torch.equal(got, images)
    mine = build_zoo_model(trainer.cfg.student, 10, 1, "student")
    mine.load_state_dict(calls[0]["state"])
    assert real(mine, calls[0]["batches"], mine.calibration_forwards()) == 2
    final = net.state_dict()
    assert all(torch.equal(v, final[k]) for k, v in mine.state_dict().items())
    assert all(torch.equal(v, final[k]) for k, v in loaded.state_dict().items())
    stats = [k for k in final if k.endswith(("running_mean", "running_var"))]
    assert all(not torch.equal(final[k], calls[0]["state"][k]) for k in stats)

    # stop after epoch 1, resume: the same final weights (recalibrated at the end of the resumed run)
    make_trainer(tmp_path, "split", digits).fit(until_epoch=1)
    assert len(calls) == 1 and load_checkpoint(tmp_path / "split", "last")["state"]["epoch"] == 1
    torch.manual_seed(999)
    resumed = make_trainer(tmp_path, "split", digits)
    resumed.fit(resume=True)
    assert len(calls) == 2
    again = resumed.student.state_dict()
    for key, value in final.items():
        assert torch.equal(value, again[key]), key
