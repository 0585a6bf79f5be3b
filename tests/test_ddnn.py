"""Depth-level dynamic networks: sub-nets are exact plain architectures, exportable as such."""

import pytest
import torch
import torch.nn.functional as F

from kdforge.errors import ConfigError
from kdforge.models import build_model
from kdforge.models.dynamic import build_ddnn, stage_depths
from kdforge.models.resnet import BasicBlock, ResNet


def randomise_bn(model):
    """Non-trivial BN statistics, so that eval-mode outputs depend on every block."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.mark.parametrize("full, subnets, size", [
    ("resnet56", ["resnet44", "resnet32", "resnet20"], 32),
    ("resnet34_imagenet", ["resnet18_imagenet"], 64),
])
def test_every_subnet_equals_its_exported_plain_model(full, subnets, size):
    torch.manual_seed(0)
    ddnn = build_ddnn(full, subnets, num_classes=10)
    randomise_bn(ddnn)
    ddnn.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(ddnn(x), ddnn.full(x))  # the full path is the plain full model
        outputs = {}
        for name in subnets:
            plain = build_model(name, num_classes=10).eval()
            plain.load_state_dict(ddnn.subnet_state_dict(name))  # strict: exactly the plain layout
            assert stage_depths(plain) == ddnn.subnets[name]
            outputs[name] = ddnn(x, name)
            assert torch.equal(outputs[name], plain(x)), name
    if len(subnets) > 1:  # different depths really compute different functions
        assert not torch.equal(outputs[subnets[0]], outputs[subnets[-1]])
    assert ddnn.names == [full, *subnets]


def test_custom_depths_and_their_export():
    torch.manual_seed(0)
    ddnn = build_ddnn("resnet56", [[3, 5, 7], "resnet20"], num_classes=10)
    assert ddnn.subnets == {"d3-5-7": (3, 5, 7), "resnet20": (3, 3, 3)}
    randomise_bn(ddnn)
    plain = ResNet(BasicBlock, (3, 5, 7), (16, 32, 64), stem_width=16, num_classes=10).eval()
    plain.load_state_dict(ddnn.subnet_state_dict("d3-5-7"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ddnn.eval()(x, "d3-5-7"), plain(x))


@pytest.mark.parametrize("full, subnets, message", [
    ("resnet56", ["resnet110"], "more blocks"),
    ("resnet56", ["resnet8x4"], "widths differ"),
    ("resnet50_imagenet", ["resnet18_imagenet"], "block type"),
    ("resnet56", ["wrn_16_2"], "cannot be a sub-net"),
    ("resnet56", [[9, 9, 10]], "between 1 and"),
    ("resnet56", [[0, 3, 3]], "between 1 and"),
    ("resnet56", [[3, 3]], "stage depths"),
    ("vgg13", ["vgg8"], "built from ResNets"),
])
def test_impossible_subnets_say_why(full, subnets, message):
    with pytest.raises(ConfigError, match=message):
        build_ddnn(full, subnets, num_classes=10)
    ddnn = build_ddnn("resnet20", ["resnet8"], num_classes=10)
    with pytest.raises(ConfigError, match="holds resnet20, resnet8"):
        ddnn(torch.randn(1, 3, 32, 32), "resnet14")


def test_summed_subnet_losses_give_the_sum_of_separate_gradients():
    torch.manual_seed(0)
    ddnn = build_ddnn("resnet20", ["resnet14", "resnet8"], num_classes=10).eval()  # eval: no BN batch coupling
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    separate = {n: torch.zeros_like(p) for n, p in ddnn.named_parameters()}
    for name in ddnn.names:
        ddnn.zero_grad()
        F.cross_entropy(ddnn(x, name), y).backward()
        for n, p in ddnn.named_parameters():
            if p.grad is not None:
                separate[n] += p.grad
    ddnn.zero_grad()
    sum(F.cross_entropy(ddnn(x, name), y) for name in ddnn.names).backward()
    for n, p in ddnn.named_parameters():
        torch.testing.assert_close(p.grad, separate[n], rtol=1e-5, atol=1e-7)
    # blocks only the full net uses get gradient from the full net alone
    assert ddnn.full.layer3[2].conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- PathBatchNorm2d
import copy  # noqa: E402

from kdforge.engine.bn_recalibration import recalibrate_bn  # noqa: E402
from kdforge.features import FeatureTaps  # noqa: E402
from kdforge.models import count_parameters  # noqa: E402
from kdforge.models.path_norm import ActivePath, PathBatchNorm2d  # noqa: E402

BN_MODES = ["shared", "switchable", "recalibrate"]


def random_bn(channels, momentum, seed):
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(channels, momentum=momentum)
    bn.running_mean.copy_(torch.randn(channels, generator=g))
    bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(channels, generator=g) + 0.5)
    bn.bias.data.copy_(torch.randn(channels, generator=g))
    return bn


def affine_of(pbn, path):
    return (pbn.weight, pbn.bias) if not pbn.private_affine else (pbn.paths[path].weight, pbn.paths[path].bias)


@pytest.mark.parametrize("private_affine", [True, False], ids=["private", "shared_affine"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
def test_path_batchnorm_with_one_path_is_batchnorm2d(private_affine, momentum):
    ref = random_bn(5, momentum, seed=2)
    pbn = PathBatchNorm2d(copy.deepcopy(ref), ["a"], ActivePath("a"), private_affine)
    one = pbn.paths["a"]
    weight, bias = affine_of(pbn, "a")
    for step in range(3):
        x = torch.randn(4, 5, 3, 3) * (step + 1) + step
        xr, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        yr, yp = ref(xr), pbn(xp)
        assert torch.equal(yr, yp)
        grad = torch.randn_like(yr)
        yr.backward(grad)
        yp.backward(grad)
        assert torch.equal(xr.grad, xp.grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(ref, name), getattr(one, name)), (step, name)
    assert int(one.num_batches_tracked) == 3
    torch.testing.assert_close(weight.grad, ref.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(bias.grad, ref.bias.grad, rtol=0, atol=0)
    ref.eval(), pbn.eval()
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(ref(x), pbn(x))
    assert int(one.num_batches_tracked) == 3  # eval does not count


@pytest.mark.parametrize("private_affine", [True, False], ids=["private", "shared_affine"])
def test_switching_path_uses_and_updates_only_that_paths_statistics(private_affine):
    active = ActivePath("a")
    pbn = PathBatchNorm2d(random_bn(4, 0.1, seed=3), ["a", "b"], active, private_affine)
    for path, seed in (("a", 4), ("b", 5)):  # different statistics (and affines) per path
        other = random_bn(4, 0.1, seed)
        pbn.paths[path].running_mean.copy_(other.running_mean)
        pbn.paths[path].running_var.copy_(other.running_var)
        if private_affine:
            pbn.paths[path].weight.data.copy_(other.weight)
            pbn.paths[path].bias.data.copy_(other.bias)
    x = torch.randn(6, 4, 2, 2) + 3
    for path, other in (("a", "b"), ("b", "a")):
        active.name = path
        before = {p: copy.deepcopy(pbn.paths[p].state_dict()) for p in ("a", "b")}
        pbn.train()
        pbn(x)
        after = pbn.paths[other].state_dict()
        assert all(torch.equal(before[other][k], after[k]) for k in after)  # the other path is untouched
        mine = pbn.paths[path]
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
        torch.testing.assert_close(mine.running_mean, 0.9 * before[path]["running_mean"] + 0.1 * mean)
        torch.testing.assert_close(mine.running_var, 0.9 * before[path]["running_var"] + 0.1 * var)
        assert int(mine.num_batches_tracked) == int(before[path]["num_batches_tracked"]) + 1
        pbn.eval()
        weight, bias = affine_of(pbn, path)
        want = ((x - mine.running_mean[:, None, None]) / torch.sqrt(mine.running_var[:, None, None] + mine.eps)
                * weight[:, None, None] + bias[:, None, None])
        torch.testing.assert_close(pbn(x), want)
    with pytest.raises(KeyError):  # a path this layer does not serve
        active.name = "c"
        pbn(x)


def test_shared_affine_gradients_accumulate_from_all_paths():
    active = ActivePath("a")
    pbn = PathBatchNorm2d(random_bn(3, 0.1, seed=6), ["a", "b"], active, private_affine=False)
    assert pbn.paths["a"].weight is None and [n for n, _ in pbn.named_parameters()] == ["weight", "bias"]
    pbn.paths["b"].running_mean.fill_(2.0)
    xa, xb = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2) * 2
    ga, gb = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    for mode in ("train", "eval"):
        pbn.train(mode == "train")
        pbn.zero_grad()
        active.name = "a"
        total = (pbn(xa) * ga).sum()
        active.name = "b"
        total = total + (pbn(xb) * gb).sum()
        total.backward()
        # by hand: d/dw sum(g * (xhat * w + b)) = sum(g * xhat), d/db = sum(g), xhat normalised per path
        want_w = torch.zeros(3)
        want_b = torch.zeros(3)
        for x, g, path in ((xa, ga, "a"), (xb, gb, "b")):
            if mode == "train":
                mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
            else:
                mean, var = pbn.paths[path].running_mean, pbn.paths[path].running_var
            xhat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
            want_w += (g * xhat).sum(dim=(0, 2, 3))
            want_b += g.sum(dim=(0, 2, 3))
        torch.testing.assert_close(pbn.weight.grad, want_w, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pbn.bias.grad, want_b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- every bn mode: export
def randomise_paths(net, seed=1):
    """Different statistics and affine parameters in every BN and every path of every BN."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (torch.nn.BatchNorm2d, PathBatchNorm2d)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def plain_model_of(net, name, in_channels=3):
    zoo = net.plain_names[name]
    if zoo is not None:
        return build_model(zoo, num_classes=net.full.fc.out_features, in_channels=in_channels)
    return ResNet(BasicBlock, net.depths(name), (16, 32, 64), stem_width=16, num_classes=net.full.fc.out_features,
                  in_channels=in_channels)


@pytest.mark.parametrize("bn", BN_MODES)
@pytest.mark.parametrize("full, subnets", [
    ("resnet56", ["resnet44", "resnet32", "resnet20"]),
    ("resnet34_imagenet", ["resnet18_imagenet"]),
], ids=["resnet56", "resnet34_imagenet"])
def test_every_bn_mode_exports_exact_plain_models(full, subnets, bn):
    torch.manual_seed(0)
    net = build_ddnn(full, subnets, num_classes=10, bn=bn)
    randomise_paths(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    states = {}
    with torch.no_grad():
        for name in net.names:
            plain = plain_model_of(net, name).eval()
            states[name] = net.subnet_state_dict(name)
            plain.load_state_dict(states[name])  # strict
            assert torch.equal(net(x, name), plain(x)), name
            assert net.path_parameters(name) == count_parameters(plain)
        assert torch.equal(net(x), net(x, full))
    # the paths' BNs really differ in the split modes (else the equalities above prove little)
    key = "layer2.0.bn1.running_mean"
    assert torch.equal(states[full][key], states[subnets[-1]][key]) == (bn == "shared")
    key = "layer2.0.bn1.weight"
    assert torch.equal(states[full][key], states[subnets[-1]][key]) == (bn != "switchable")


@pytest.mark.parametrize("bn", BN_MODES)
def test_train_mode_subnet_from_the_branch_tap_equals_the_subnet_from_the_image(bn):
    torch.manual_seed(0)
    net = build_ddnn("resnet20", ["resnet14", "resnet8", [3, 1, 2]], num_classes=10, bn=bn)
    randomise_paths(net)
    net.train()
    x = torch.randn(4, 3, 32, 32)
    subs = net.names[1:]
    with FeatureTaps(net, [net.branch_tap(s) for s in subs]) as taps:
        full, feats = taps(x)
    assert torch.equal(full, net.full(x))  # net.full after net(x): the full path
    for name in subs:
        z, stages = net.continue_path(name, feats[net.branch_tap(name)], 0, net.depths(name)[0])
        assert len(stages) == 3
        assert torch.equal(z, net(x, name)), name
        assert torch.equal(stages[0], feats[net.branch_tap(name)])


@pytest.mark.parametrize("bn", BN_MODES)
def test_one_ekd_style_step_updates_each_bn_once_per_path_that_runs_it(bn):
    """Full forward + sub-nets continued from the branch taps: the stem and the first stage are counted once."""
    torch.manual_seed(0)
    net = build_ddnn("resnet20", ["resnet14", "resnet8"], num_classes=10, bn=bn).train()
    plain = copy.deepcopy(net.full)
    x = torch.randn(4, 3, 32, 32)
    with FeatureTaps(net, [net.branch_tap(s) for s in net.names[1:]]) as taps:
        _, feats = taps(x)
    for name in net.names[1:]:
        net.continue_path(name, feats[net.branch_tap(name)], 0, net.depths(name)[0])
    plain(x)
    assert torch.equal(net.full.bn1.running_mean, plain.bn1.running_mean)  # not double-counted
    assert torch.equal(net.full.layer1[0].bn1.running_var, plain.layer1[0].bn1.running_var)
    for key, value in net.full.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            continue
        users = [p for p in net.names if net._plain_keys(p).get(key) is not None]
        if key.startswith(("bn1", "layer1")):
            want = 1
        elif ".paths." in key:
            want = 1  # its own path only
        else:
            want = len(users)  # shared over the paths that use it (shared mode / single-path layers)
        assert int(value) == want, key


def test_active_path_never_leaks_into_the_full_net():
    torch.manual_seed(0)
    net = build_ddnn("resnet20", ["resnet14", "resnet8"], num_classes=10, bn="switchable")
    randomise_paths(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = net.full(x)
        net(x, "resnet8")
        assert torch.equal(net.full(x), want)  # was a KeyError: the full net ran with resnet8's BNs
        net.path_complexity(32, 3)
        assert torch.equal(net.full(x), want)
    assert not net.training  # path_complexity kept the eval mode (it was switched to train)


def test_subnet_with_the_full_depths_is_its_own_path():
    torch.manual_seed(0)
    net = build_ddnn("resnet20", {"twin": [3, 3, 3], "resnet8": [1, 1, 1]}, num_classes=10, bn="switchable")
    randomise_paths(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    plain = build_model("resnet20", num_classes=10).eval()
    plain.load_state_dict(net.subnet_state_dict("twin"))
    with torch.no_grad():
        z = net(x, "twin")
        assert torch.equal(z, plain(x))  # was the full path's output, with the full path's BNs
        assert torch.equal(z, net.continue_path("twin", net.stem(x))[0])
        assert not torch.equal(z, net(x))


def test_deepcopy_and_state_dict_round_trip():
    torch.manual_seed(0)
    net = build_ddnn("resnet20", ["resnet14", "resnet8"], num_classes=10, bn="recalibrate")
    randomise_paths(net)
    net.eval()
    twin = copy.deepcopy(net)
    pbn = twin.full.layer2[0].bn1
    assert isinstance(pbn, PathBatchNorm2d) and pbn.active is twin._active and twin._active is not net._active
    other = build_model("ddnn", num_classes=10, full="resnet20", subnets=["resnet14", "resnet8"], bn="recalibrate")
    other.load_state_dict(net.state_dict())  # strict
    other.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for name in net.names:
            want = net(x, name)
            assert torch.equal(twin(x, name), want) and torch.equal(other(x, name), want), name
    twin._active.name = "resnet8"
    assert net._active.name == "resnet20"


@pytest.mark.parametrize("bn", BN_MODES)
def test_channels_last_paths_match(bn):
    torch.manual_seed(0)
    net = build_ddnn("resnet14", ["resnet8"], num_classes=10, bn=bn)
    randomise_paths(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = {n: net(x, n) for n in net.names}
        net.to(memory_format=torch.channels_last)
        for name in net.names:  # other conv kernels, other fp32 sum orders: as test_models' channels-last check
            torch.testing.assert_close(net(x.to(memory_format=torch.channels_last), name), want[name],
                                       rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- BN recalibration
def batch_stats_by_hooks(net, batches):
    """{(bn module name, path): [(batch mean, unbiased batch variance) per call]} of the BN inputs,
    running every path on every batch in train mode on a copy."""
    ref = copy.deepcopy(net).train()
    records, handles = {}, []
    for name, m in ref.named_modules():
        if isinstance(m, (torch.nn.BatchNorm2d, PathBatchNorm2d)) and ".paths." not in name:
            def hook(mod, args, name=name):
                x = args[0].detach().double()
                path = mod.active.name if isinstance(mod, PathBatchNorm2d) else None
                records.setdefault((name, path), []).append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)))
            handles.append(m.register_forward_pre_hook(hook))
    with torch.no_grad():
        for x in batches:
            for path in ref.names:
                ref(x, path)
    return records


def test_recalibrate_bn_gives_the_mean_of_each_paths_batch_statistics():
    torch.manual_seed(0)
    net = build_ddnn("resnet20", ["resnet14", "resnet8"], num_classes=10, bn="recalibrate")
    randomise_paths(net)
    assert net.bn_recalibration_batches == 50
    net.eval()
    net.full.layer1[0].train()  # a mixed state, to be restored module by module
    net.full.layer2[0].bn1.paths["resnet8"].momentum = 0.3
    modes = {n: m.training for n, m in net.named_modules()}
    momenta = {n: m.momentum for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    batches = [torch.randn(4, 3, 32, 32) * s + s for s in (1.0, 2.0, 0.5)]
    records = batch_stats_by_hooks(net, batches)
    plain = copy.deepcopy(net.full)  # the plain full net's stem: one forward per batch
    for m in plain.modules():
        if isinstance(m, PathBatchNorm2d):
            m.active.name = "resnet20"
    assert recalibrate_bn(plain, batches) == 3

    assert recalibrate_bn(net, batches, net.calibration_forwards()) == 3
    modules = dict(net.named_modules())
    checked = 0
    for (name, path), stats in records.items():
        m = modules[name]
        own = m.paths[path] if path is not None else m
        mean = torch.stack([s[0] for s in stats]).mean(0)
        var = torch.stack([s[1] for s in stats]).mean(0)
        torch.testing.assert_close(own.running_mean.double(), mean, rtol=1e-5, atol=1e-6, msg=f"{name} {path}")
        torch.testing.assert_close(own.running_var.double(), var, rtol=1e-5, atol=1e-6, msg=f"{name} {path}")
        assert int(own.num_batches_tracked) == len(stats)
        checked += 1
    users = {p for _, p in records if p is not None}
    assert users == set(net.names) and checked == 37  # 1 stem + 6 layer1 + 2 x (3*3 + 2*2 + 2): each path of each BN
    torch.testing.assert_close(net.full.bn1.running_mean, plain.bn1.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.full.bn1.running_var, plain.bn1.running_var, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.full.layer1[2].bn2.running_var, plain.layer1[2].bn2.running_var,
                               rtol=1e-5, atol=1e-6)
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert {n: m.momentum for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d)} == momenta

    default = copy.deepcopy(net)  # without forwards: every path of a multi-path net (not the full path alone)
    assert recalibrate_bn(default, batches) == 3
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in default.state_dict().items())

    before = copy.deepcopy(net.state_dict())
    assert recalibrate_bn(net, [], net.calibration_forwards()) == 0
    assert recalibrate_bn(net, iter(())) == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert {n: m.training for n, m in net.named_modules()} == modes


# ---------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("kwargs, message", [
    ({"bn": "batch"}, "'batch' is not one of shared, switchable, recalibrate"),
    ({"subnets": {"resnet20": [1, 1, 1]}}, "is the full net's name"),
    ({"subnets": {"a.b": [1, 1, 1]}}, "without dots"),
    ({"subnets": [[1, 1, "x"]]}, "a list of blocks per stage"),
    ({"subnets": [[1.5, 1, 1]]}, "a list of blocks per stage"),
    ({"subnets": []}, "ddnn subnets"),
    ({"subnets": "resnet8"}, "ddnn subnets"),
    ({"subnets": [[1, 1, 1, 1]]}, "4 stage depths"),
    ({"recalibrate_batches": -1}, "recalibrate_batches"),
    ({"full": "mobilenetv2"}, "built from ResNets"),
    ({"subnets": ["resnet8", "resnet8"]}, "resnet8 is listed twice"),
    ({"subnets": [[1, 1, 1], [1, 1, 1]]}, "d1-1-1 is listed twice"),
    ({"subnets": {"half": [1, 1, 1]}, "bn": "switchable"}, "taken by torch.nn.Module"),
])
def test_ddnn_config_errors(kwargs, message):
    options = {"full": "resnet20", "subnets": ["resnet8"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_model("ddnn", num_classes=10, **options)


# ---------------------------------------------------------------------------- start from a plain full model
@pytest.mark.parametrize("bn", ["shared", "switchable", "recalibrate"])
def test_ddnn_starts_from_a_trained_plain_full_model(bn, tmp_path):
    from kdforge.config import ModelConfig
    from kdforge.engine.checkpoint import FORMAT, atomic_save
    from kdforge.engine.run import build_zoo_model
    from kdforge.errors import CheckpointError

    torch.manual_seed(3)
    plain = build_model("resnet20", num_classes=10).eval()
    randomise_bn(plain)
    ckpt = {"format": FORMAT, "model": plain.zoo_record, "student": plain.state_dict()}
    atomic_save(ckpt, tmp_path / "resnet20.pt")
    mcfg = ModelConfig(model="ddnn", checkpoint=str(tmp_path / "resnet20.pt"),
                       options={"full": "resnet20", "subnets": ["resnet14", "resnet8"], "bn": bn})
    net = build_zoo_model(mcfg, 10, 3, "student").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
        for sub in ("resnet14", "resnet8"):  # every path starts from the plain model's tensors
            reference = build_model(sub, num_classes=10).eval()
            reference.load_state_dict({k: v for k, v in plain.state_dict().items() if k in reference.state_dict()})
            assert torch.equal(net(x, sub), reference(x))
    wrong = ModelConfig(model="ddnn", checkpoint=str(tmp_path / "resnet20.pt"),
                        options={"full": "resnet32", "subnets": ["resnet8"], "bn": bn})
    with pytest.raises(CheckpointError, match="holds a resnet20"):
        build_zoo_model(wrong, 10, 3, "student")
