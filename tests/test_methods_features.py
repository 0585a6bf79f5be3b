"""Feature methods fitnet, at, sp, nst, pkt, cc and their shared adapters.

Each loss is checked against the paper's formula written out independently here (plain
Python loops over `tolist()` values), plus gradients (student and adapters yes, teacher
never), invariances, default layers for heterogeneous zoo pairs, and shape errors.
"""

import math

import pytest
import torch
from torch import nn

from kdforge.errors import LayerError
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, StepOutputs, build_method, method_class
from kdforge.methods.adapters import ConvRegressor, LinearEmbed, pair_layers, resample_to
from kdforge.models import build_model

FEATURE_METHODS = ["fitnet", "at", "sp", "nst", "pkt", "cc"]


# ----------------------------------------------------------------------------- helpers
def step(t_feats: dict, s_feats: dict, batch: int) -> StepOutputs:
    return StepOutputs(images=torch.zeros(batch, 3, 4, 4), labels=None,
                       student_logits=torch.zeros(batch, 10), teacher_logits=torch.zeros(batch, 10),
                       student_features=s_feats, teacher_features=t_feats)


def make(name: str, t_layers: list[str], s_layers: list[str], t_feats: dict, s_feats: dict, **params):
    """A method on hand-made features: layers set directly, setup run on the features."""
    method = build_method(name, params)
    method.teacher_layers, method.student_layers = list(t_layers), list(s_layers)
    batch = next(iter(s_feats.values())).shape[0]
    method.setup(None, None, step(t_feats, s_feats, batch))
    return method


def nested(x: torch.Tensor):
    return x.detach().double().tolist()


def block_pool(m, f):
    """Average each f x f block of a 2D list (independent of adaptive pooling)."""
    h, w = len(m) // f, len(m[0]) // f
    return [[sum(m[i * f + a][j * f + b] for a in range(f) for b in range(f)) / (f * f) for j in range(w)]
            for i in range(h)]


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n > 0 else list(v)


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def flat(x):
    """Flatten a nested list."""
    if isinstance(x, list):
        return [y for item in x for y in flat(item)]
    return [x]


def check_grads(loss: torch.Tensor, student_feats, teacher_feats, adapters=()):
    loss.backward()
    for f in student_feats:
        assert f.grad is not None and f.grad.abs().sum() > 0, "no gradient reached the student features"
    for f in teacher_feats:
        assert f.grad is None, "gradient reached the teacher features"
    for module in adapters:
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), "adapter got no gradient"


# ----------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("s_size, t_size, mode", [
    ((8, 8), (8, 8), "same"), ((16, 16), (8, 8), "stride2"), ((16, 16), (4, 4), "stride4"),
    ((4, 4), (8, 8), "upsample2"), ((2, 2), (8, 8), "upsample4"), ((6, 6), (4, 4), "resample"),
    ((4, 4), (6, 6), "resample"), ((8, 4), (4, 8), "resample"),
])
def test_conv_regressor_maps_to_teacher_shape(s_size, t_size, mode):
    reg = ConvRegressor(5, 7, s_size, t_size)
    assert reg.mode == mode
    y = reg(torch.randn(3, 5, *s_size))
    assert y.shape == (3, 7, *t_size)
    with pytest.raises(ValueError):
        reg(torch.randn(3, 5, s_size[0] + 1, s_size[1]))


def test_conv_regressor_options_and_linear_embed():
    reg = ConvRegressor(4, 4, (4, 4), (4, 4), bn=False)
    assert isinstance(reg.bn, nn.Identity) and reg.conv.bias is not None
    assert (ConvRegressor(4, 4, 4, 4, relu=True)(torch.randn(2, 4, 4, 4)) >= 0).all()
    emb = LinearEmbed(12, 5, normalize=True)
    y = emb(torch.randn(3, 3, 2, 2))  # flattened
    assert y.shape == (3, 5) and torch.allclose(y.norm(dim=1), torch.ones(3), atol=1e-6)
    assert LinearEmbed(12, 5)(torch.randn(3, 12)).norm(dim=1).sub(1).abs().max() > 1e-3
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(resample_to(x, (4, 4))[0, 0, 0, 0], x[0, 0, :2, :2].mean())


def test_pair_layers_rules():
    t, s = build_model("vgg13", num_classes=10), build_model("mobilenetv2", num_classes=10)
    tl, sl = pair_layers("x", s, t, None, None, "stages")
    assert len(tl) == len(sl) == 4 and tl[-1] == "layer5" and sl[-1] == "layer7"
    tl, sl = pair_layers("x", s, t, ["layer1", "layer2"], None, "stages")  # defaults cut to the given length
    assert tl == ["layer1", "layer2"] and sl == ["layer5", "layer7"]
    with pytest.raises(LayerError, match="same length"):
        pair_layers("x", s, t, ["layer1", "layer2"], ["layer2"], "stages")
    with pytest.raises(LayerError, match="same length"):  # a given list longer than the other side's defaults
        pair_layers("x", s, t, None, ["layer1", "layer2", "layer3", "layer4", "layer5", "layer6"], "stages")
    with pytest.raises(LayerError, match="teacher"):
        pair_layers("x", s, None, None, None, "stages")


# ----------------------------------------------------------------------------- fitnet
def direct_mse(y, t):
    a, b = flat(nested(y)), flat(nested(t))
    return sum((u - v) ** 2 for u, v in zip(a, b)) / len(a)


@pytest.mark.parametrize("s_shape, t_shape", [((2, 3, 8, 8), (2, 5, 4, 4)), ((2, 6, 4, 4), (2, 4, 8, 8)),
                                              ((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 6), (2, 9))])
def test_fitnet_equals_mse_of_regressed_student(s_shape, t_shape):
    fs, ft = torch.randn(*s_shape), torch.randn(*t_shape)
    m = make("fitnet", ["t"], ["s"], {"t": ft}, {"s": fs})
    loss = m(step({"t": ft}, {"s": fs}, 2))
    y = m.regressors[0](fs)
    assert y.shape == ft.shape
    assert loss.item() == pytest.approx(direct_mse(y, ft), rel=1e-5)
    assert isinstance(m.regressors[0], ConvRegressor if len(s_shape) == 4 else LinearEmbed)


def test_fitnet_two_hints_sum_and_gradients():
    fs1 = torch.randn(2, 3, 8, 8, requires_grad=True)
    fs2 = torch.randn(2, 4, 4, 4, requires_grad=True)
    ft1 = torch.randn(2, 6, 8, 8, requires_grad=True)
    ft2 = torch.randn(2, 8, 2, 2, requires_grad=True)
    t, s = {"t1": ft1, "t2": ft2}, {"s1": fs1, "s2": fs2}
    m = make("fitnet", ["t1", "t2"], ["s1", "s2"], t, s)
    loss = m(step(t, s, 2))
    direct = direct_mse(m.regressors[0](fs1), ft1) + direct_mse(m.regressors[1](fs2), ft2)
    assert loss.item() == pytest.approx(direct, rel=1e-5)
    check_grads(loss, [fs1, fs2], [ft1, ft2], m.regressors)
    # the paper's hint stage trains the student and the regressors
    student = nn.Linear(2, 2)
    assert set(map(id, m.pretrain_parameters(student))) == set(map(id, [*student.parameters(), *m.parameters()]))
    assert m.pretrain_loss(step(t, s, 2)).item() == pytest.approx(direct, rel=1e-5)


def test_fitnet_zero_with_identity_regressor():
    f = torch.randn(3, 4, 5, 5)
    m = make("fitnet", ["t"], ["s"], {"t": f}, {"s": f}, bn=False)
    conv = m.regressors[0].conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(4):
            conv.weight[c, c, 1, 1] = 1.0
    assert m(step({"t": f}, {"s": f}, 3)).item() == pytest.approx(0.0, abs=1e-10)


def test_fitnet_state_dict_round_trip():
    fs, ft = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    a = make("fitnet", ["t"], ["s"], {"t": ft}, {"s": fs})
    b = make("fitnet", ["t"], ["s"], {"t": ft}, {"s": fs})
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert torch.equal(a(step({"t": ft}, {"s": fs}, 2)), b(step({"t": ft}, {"s": fs}, 2)))


# ----------------------------------------------------------------------------- at
def direct_at(fs, ft, p=2.0):
    """Per sample: q = mean_c |F|^p (block-pooled to the smaller size), normalised; mean of squares."""
    total, count = 0.0, 0
    for xs, xt in zip(nested(fs), nested(ft)):
        maps = []
        for x in (xs, xt):
            c, h, w = len(x), len(x[0]), len(x[0][0])
            maps.append([[sum(abs(x[k][i][j]) ** p for k in range(c)) / c for j in range(w)] for i in range(h)])
        size = min(len(maps[0]), len(maps[1]))
        maps = [block_pool(m, len(m) // size) if len(m) > size else m for m in maps]
        qs, qt = unit(flat(maps[0])), unit(flat(maps[1]))
        total += sum((a - b) ** 2 for a, b in zip(qs, qt))
        count += len(qs)
    return total / count


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_at_equals_direct_formula(p):
    fs1, ft1 = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 4, 4, requires_grad=True)
    fs2, ft2 = torch.randn(2, 4, 2, 2, requires_grad=True), torch.randn(2, 6, 4, 4, requires_grad=True)  # teacher larger
    t, s = {"a": ft1, "b": ft2}, {"x": fs1, "y": fs2}
    m = make("at", ["a", "b"], ["x", "y"], t, s, p=p)
    loss = m(step(t, s, 2))
    assert loss.item() == pytest.approx(direct_at(fs1, ft1, p) + direct_at(fs2, ft2, p), rel=1e-5)
    check_grads(loss, [fs1, fs2], [ft1, ft2])


def test_at_student_larger_and_invariances():
    fs, ft = torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4)
    m = make("at", ["t"], ["s"], {"t": ft}, {"s": fs})
    loss = m(step({"t": ft}, {"s": fs}, 3)).item()
    assert loss == pytest.approx(direct_at(fs, ft), rel=1e-5)
    assert m(step({"t": ft}, {"s": fs * 7.0}, 3)).item() == pytest.approx(loss, rel=1e-5)  # scale invariant
    doubled = torch.cat([fs, -fs], dim=1)  # other channel count, same attention
    assert m(step({"t": doubled}, {"s": fs}, 3)).item() == pytest.approx(0.0, abs=1e-10)


# ----------------------------------------------------------------------------- sp
def direct_sp(fs, ft):
    b = fs.shape[0]
    mats = []
    for f in (fs, ft):
        q = [flat(x) for x in nested(f)]
        mats.append([unit([dot(q[i], q[j]) for j in range(b)]) for i in range(b)])
    return sum((mats[0][i][j] - mats[1][i][j]) ** 2 for i in range(b) for j in range(b)) / b ** 2


def test_sp_equals_direct_formula_and_gradients():
    fs, ft = torch.randn(4, 3, 4, 4, requires_grad=True), torch.randn(4, 7, 2, 2, requires_grad=True)
    m = make("sp", ["t"], ["s"], {"t": ft}, {"s": fs})
    loss = m(step({"t": ft}, {"s": fs}, 4))
    assert loss.item() == pytest.approx(direct_sp(fs, ft), rel=1e-5)
    check_grads(loss, [fs], [ft])


def test_sp_invariances():
    f = torch.randn(5, 6)
    m = make("sp", ["t"], ["s"], {"t": f}, {"s": f})
    assert m(step({"t": f}, {"s": f}, 5)).item() == pytest.approx(0.0, abs=1e-12)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6))  # orthogonal maps keep the Gram matrix
    assert m(step({"t": f}, {"s": 3.0 * f @ rotation}, 5)).item() == pytest.approx(0.0, abs=1e-10)
    assert m(step({"t": f}, {"s": torch.randn(5, 6)}, 5)).item() > 1e-3


# ----------------------------------------------------------------------------- nst
def direct_nst(fs, ft, degree=2, c=0.0):
    total = 0.0
    for xs, xt in zip(nested(fs), nested(ft)):
        size = min(len(xs[0]), len(xt[0]))
        chans = []
        for x in (xs, xt):
            chans.append([unit(flat(block_pool(ch, len(ch) // size) if len(ch) > size else ch)) for ch in x])
        s, t = chans

        def k(a, b):
            return (dot(a, b) + c) ** degree

        def mean_k(u, v):
            return sum(k(a, b) for a in u for b in v) / (len(u) * len(v))

        total += mean_k(t, t) + mean_k(s, s) - 2 * mean_k(s, t)
    return total / fs.shape[0]


@pytest.mark.parametrize("degree, c", [(2, 0.0), (3, 1.0)])
def test_nst_equals_direct_formula_and_gradients(degree, c):
    fs1, ft1 = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 5, 8, 8, requires_grad=True)
    fs2, ft2 = torch.randn(2, 4, 4, 4, requires_grad=True), torch.randn(2, 2, 2, 2, requires_grad=True)
    t, s = {"a": ft1, "b": ft2}, {"x": fs1, "y": fs2}
    m = make("nst", ["a", "b"], ["x", "y"], t, s, degree=degree, c=c)
    loss = m(step(t, s, 2))
    direct = direct_nst(fs1, ft1, degree, c) + direct_nst(fs2, ft2, degree, c)
    assert loss.item() == pytest.approx(direct, rel=1e-5)
    check_grads(loss, [fs1, fs2], [ft1, ft2])


def test_nst_channel_set_invariances():
    f = torch.rand(2, 5, 4, 4)
    m = make("nst", ["t"], ["s"], {"t": f}, {"s": f})
    scaled_permuted = f[:, torch.randperm(5)] * torch.rand(1, 5, 1, 1).add(0.5)  # MMD compares sets of unit maps
    assert m(step({"t": f}, {"s": scaled_permuted}, 2)).item() == pytest.approx(0.0, abs=1e-6)
    assert m(step({"t": f}, {"s": torch.randn(2, 5, 4, 4)}, 2)).item() > 1e-3


# ----------------------------------------------------------------------------- pkt
def direct_pkt(fs, ft):
    b = fs.shape[0]
    cond = []
    for f in (fs, ft):
        x = [unit(flat(v)) for v in nested(f)]
        k = [[(dot(x[i], x[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        cond.append([[k[i][j] / sum(k[i][l] for l in range(b) if l != i) for j in range(b)] for i in range(b)])
    ps, pt = cond
    kl = sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for i in range(b) for j in range(b) if i != j)
    return kl / (b * (b - 1))


def test_pkt_equals_direct_formula_and_gradients():
    fs, ft = torch.randn(5, 6, requires_grad=True), torch.randn(5, 9, requires_grad=True)
    m = make("pkt", ["t"], ["s"], {"t": ft}, {"s": fs})
    loss = m(step({"t": ft}, {"s": fs}, 5))
    assert loss.item() == pytest.approx(direct_pkt(fs, ft), rel=1e-5)
    check_grads(loss, [fs], [ft])


def test_pkt_invariances():
    f = torch.randn(6, 8)
    m = make("pkt", ["t"], ["s"], {"t": f}, {"s": f})
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    per_sample_scale = torch.rand(6, 1) + 0.1
    assert m(step({"t": f}, {"s": (f @ rotation) * per_sample_scale}, 6)).item() == pytest.approx(0.0, abs=1e-6)
    assert m(step({"t": f}, {"s": torch.randn(6, 8)}, 6)).item() > 1e-4


# ----------------------------------------------------------------------------- cc
def direct_cc(fs, ft, gamma=0.4, order=2):
    b = fs.shape[0]
    mats = []
    for f in (fs, ft):
        x = [unit(flat(v)) for v in nested(f)]
        mats.append([[math.exp(-2 * gamma) * sum((2 * gamma * dot(x[i], x[j])) ** p / math.factorial(p)
                                                 for p in range(order + 1)) for j in range(b)] for i in range(b)])
    return sum((mats[0][i][j] - mats[1][i][j]) ** 2 for i in range(b) for j in range(b)) / b ** 2


@pytest.mark.parametrize("gamma, order", [(0.4, 2), (1.0, 4)])
def test_cc_equals_direct_formula(gamma, order):
    fs, ft = torch.randn(5, 7), torch.randn(5, 7)
    m = make("cc", ["t"], ["s"], {"t": ft}, {"s": fs}, gamma=gamma, order=order)
    assert isinstance(m.embeds[0], nn.Identity)  # same dims: no embed by default
    assert m(step({"t": ft}, {"s": fs}, 5)).item() == pytest.approx(direct_cc(fs, ft, gamma, order), rel=1e-5)


def test_cc_embeds_student_when_dims_differ_and_gradients():
    fs, ft = torch.randn(4, 6, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    m = make("cc", ["t"], ["s"], {"t": ft}, {"s": fs})
    assert isinstance(m.embeds[0], LinearEmbed)
    loss = m(step({"t": ft}, {"s": fs}, 4))
    assert loss.item() == pytest.approx(direct_cc(m.embeds[0](fs), ft), rel=1e-5)
    check_grads(loss, [fs], [ft], m.embeds)
    assert isinstance(make("cc", ["t"], ["s"], {"t": ft}, {"s": fs}, embed=False).embeds[0], nn.Identity)
    assert isinstance(make("cc", ["t"], ["s"], {"t": ft}, {"s": ft}, embed=True).embeds[0], LinearEmbed)


def test_cc_taylor_series_tends_to_the_rbf_kernel_and_invariance():
    from kdforge.methods.cc import correlation_matrix

    f = torch.randn(4, 5)
    x = torch.nn.functional.normalize(f, dim=1)
    exact = torch.exp(-0.4 * torch.cdist(x, x).pow(2))
    assert torch.allclose(correlation_matrix(f, 0.4, 12), exact, atol=1e-5)
    m = make("cc", ["t"], ["s"], {"t": f}, {"s": f})
    assert m(step({"t": f}, {"s": f * (torch.rand(4, 1) + 0.5)}, 4)).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- zoo pairs
EXPECTED_DEFAULTS = {
    ("resnet32x4", "resnet8x4"): {
        "fitnet": (["layer2.4.out_relu:input"], ["layer2.0.out_relu:input"]),
        "at": (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
        "sp": (["layer3"], ["layer3"]),
        "nst": (["layer1", "layer2", "layer3"], ["layer1", "layer2", "layer3"]),
        "pkt": (["fc:input"], ["fc:input"]),
        "cc": (["fc:input"], ["fc:input"]),
    },
    ("vgg13", "mobilenetv2"): {
        "fitnet": (["layer3.1.out_relu:input"], ["layer5.2.out_relu:input"]),
        "at": (["layer2", "layer3", "layer4", "layer5"], ["layer2", "layer3", "layer5", "layer7"]),
        "sp": (["layer5"], ["layer7"]),
        "nst": (["layer2", "layer3", "layer4", "layer5"], ["layer2", "layer3", "layer5", "layer7"]),
        "pkt": (["fc:input"], ["fc:input"]),
        "cc": (["fc:input"], ["fc:input"]),
    },
}


@pytest.fixture(scope="module")
def zoo():
    torch.manual_seed(0)
    return {name: build_model(name, num_classes=10) for name in ["resnet32x4", "resnet8x4", "vgg13", "mobilenetv2"]}


@pytest.mark.parametrize("pair", list(EXPECTED_DEFAULTS))
def test_defaults_and_one_step_on_zoo_pair(zoo, pair):
    teacher, student = zoo[pair[0]], zoo[pair[1]]
    teacher.eval()
    student.train()
    methods = {}
    for name in FEATURE_METHODS:
        method = build_method(name)
        method.bind(student, teacher)
        assert (method.teacher_layers, method.student_layers) == EXPECTED_DEFAULTS[pair][name], name
        methods[name] = method
    # capture every method's taps in one pass, like the engine does for a composed run
    t_taps = list(dict.fromkeys(t for m in methods.values() for t in m.teacher_layers))
    s_taps = list(dict.fromkeys(t for m in methods.values() for t in m.student_layers))
    images = torch.randn(4, 3, 32, 32)
    with FeatureTaps(teacher, t_taps) as tt, FeatureTaps(student, s_taps) as st:
        with torch.no_grad():
            t_logits, t_feats = tt(images)
        s_logits, s_feats = st(images)
    out = StepOutputs(images, None, s_logits, t_logits, dict(s_feats), dict(t_feats), student, teacher)
    for name, method in methods.items():
        method.setup(student, teacher, out)
    if pair == ("vgg13", "mobilenetv2"):  # 256x8x8 -> 48x4x4: upsampling regressor; 512 vs 1280 embedding
        assert methods["fitnet"].regressors[0].mode == "upsample2"
        assert isinstance(methods["cc"].embeds[0], LinearEmbed)
    total = 0.0
    for name, method in methods.items():
        loss = method(out)
        assert loss.dim() == 0 and torch.isfinite(loss), name
        total = total + method_class(name).typical_weight * loss
    student.zero_grad(set_to_none=True)
    total.backward()
    assert all(p.grad is not None for p in student.layer1.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_composed_run_from_config(zoo):
    teacher, student = zoo["resnet32x4"], zoo["resnet8x4"]
    composer = Losses.from_config({"ce": 1.0, "at": 1000, "fitnet": {"weight": 100, "bn": False},
                                         "cc": {"weight": 0.02, "embed": True, "order": 3}})
    composer.bind(student, teacher)
    assert set(composer.student_taps) == {"layer1", "layer2", "layer3", "layer2.0.out_relu:input", "fc:input"}
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with FeatureTaps(teacher, composer.teacher_taps) as tt, FeatureTaps(student, composer.student_taps) as st:
        with torch.no_grad():
            t_logits, t_feats = tt(images)
        s_logits, s_feats = st(images)
    out = StepOutputs(images, labels, s_logits, t_logits, dict(s_feats), dict(t_feats), student, teacher)
    composer.setup(student, teacher, out)
    losses = composer(out)
    assert set(losses) == {"ce", "at", "fitnet", "cc"} and all(torch.isfinite(v) for v in losses.values())
    names = {n for n, _ in composer.named_parameters()}
    assert any(n.startswith("methods.fitnet.regressors.0.conv") for n in names)
    assert any(n.startswith("methods.cc.embeds.0.linear") for n in names)


@pytest.mark.parametrize("name, params, t_name, s_name", [
    ("fitnet", {"teacher_layers": ["fc:input"]}, "fc:input", "layer2.0.out_relu:input"),
    ("at", {"student_layers": ["fc:input"], "teacher_layers": ["layer3"]}, "layer3", "fc:input"),
    ("nst", {"teacher_layers": ["fc:input"], "student_layers": ["layer2"]}, "fc:input", "layer2"),
])
def test_unbridgeable_pair_names_both_layers(zoo, name, params, t_name, s_name):
    teacher, student = zoo["resnet32x4"], zoo["resnet8x4"]
    method = build_method(name, params)
    method.bind(student, teacher)
    assert (method.teacher_layers, method.student_layers) == ([t_name], [s_name])
    images = torch.randn(2, 3, 32, 32)
    with FeatureTaps(teacher, method.teacher_layers) as tt, FeatureTaps(student, method.student_layers) as st:
        with torch.no_grad():
            t_logits, t_feats = tt(images)
            s_logits, s_feats = st(images)
    out = StepOutputs(images, None, s_logits, t_logits, dict(s_feats), dict(t_feats))
    with pytest.raises(LayerError) as info:
        method.setup(student, teacher, out)
    assert t_name in str(info.value) and s_name in str(info.value) and name in str(info.value)


def test_method_metadata():
    for name in FEATURE_METHODS:
        cls = method_class(name)
        assert cls.needs_teacher and not cls.needs_labels and cls.paper and cls.default_taps
        assert cls.typical_weight > 0 and cls.__doc__.splitlines()[0]
    assert build_method("fitnet", {"pretrain_epochs": 2}).pretrain_epochs == 2
    assert build_method("fitnet").pretrain_epochs == 0
