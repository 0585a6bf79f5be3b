"""PURSUhInT end to end: probe pass, selection, cache, training configs and the `hints` command."""

import json

import pytest
import torch
from torch import nn

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.data.tensor_dataset import ImageTensorDataset
from kdforge.engine import train_from_config
from kdforge.errors import ConfigError, LayerError
from kdforge.hints.cache import cache_file, cached_select
from kdforge.hints.probe import candidate_layers, pool, probe_features, probe_indices
from kdforge.hints.selection import HintFileError, HintSelection, select_hints
from kdforge.models import build_model

GROUPS = (4, 7, 5)  # layers per group of the network below: 16 layers


def random_images(n=300, channels=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageTensorDataset(images, labels, classes=[str(i) for i in range(10)], mean=(0.5,) * channels,
                              std=(0.25,) * channels, name="random")


class MixBlock(nn.Module):
    """Reads one input channel: 4 nonlinear maps of it, mixed by a fixed orthogonal matrix times a scale."""

    def __init__(self, channel: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
        self.channel = channel
        self.register_buffer("mix", (q * (0.5 + torch.rand(1, generator=g, dtype=torch.float64))).float())

    def forward(self, x, _previous):
        v = x[:, self.channel]
        maps = torch.stack([v, v * v, torch.relu(v - 0.3), torch.sin(3 * v)], dim=1)  # (N, 4, H, W)
        return torch.einsum("ij,njhw->nihw", self.mix, maps)


class GroupedNet(nn.Module):
    """Layers in known groups: every layer of group g is an orthogonal, scaled mix of the same
    features of input channel g (CCA and CKA distance 0 within a group); the input channels
    are independent, so groups are far apart."""

    def __init__(self, groups=GROUPS):
        super().__init__()
        blocks = [MixBlock(g, seed=i) for g, size in enumerate(groups) for i in range(size)]
        self.blocks = nn.ModuleList(blocks)
        self.block_names = [f"blocks.{i}" for i in range(len(blocks))]
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        out = None
        for block in self.blocks:
            out = block(x, out)
        return self.head(out.mean((2, 3)))


def group_of_layers(groups=GROUPS):
    return [g for g, size in enumerate(groups) for _ in range(size)]


# ----------------------------------------------------------------------------- probe
def test_probe_indices_deterministic_distinct_random_order():
    a, b = probe_indices(1000, 100, seed=3), probe_indices(1000, 100, seed=3)
    assert torch.equal(a, b)
    assert len(set(a.tolist())) == 100 and a.max() < 1000
    assert not torch.equal(a, a.sort().values)  # a leading part is a random sample too (cka_rbf uses one)
    assert not torch.equal(a, probe_indices(1000, 100, seed=4))
    assert sorted(probe_indices(50, 100, seed=0).tolist()) == list(range(50))  # capped at the dataset size
    with pytest.raises(ConfigError, match="hints.probe"):
        probe_indices(50, 1, seed=0)


def test_probe_features_equal_direct_pooling_in_any_batch_size():
    model = build_model("resnet14", num_classes=10, in_channels=3).eval()
    data = random_images(60)
    layers = ["layer1.0", "layer2.1", "layer3.1.out_relu:input", "fc:input"]
    idx = probe_indices(len(data), 40, seed=1)
    small = probe_features(model, data, layers, idx, batch_size=7)
    large = probe_features(model, data, layers, idx, batch_size=64)
    from kdforge.data.augment import normalize
    from kdforge.features import FeatureTaps

    x = normalize(data.images[idx], torch.tensor(data.mean), torch.tensor(data.std))
    with torch.no_grad(), FeatureTaps(model, layers) as taps:
        _, feats = taps(x)
    for layer, a, b in zip(layers, small, large):
        direct = feats[layer].mean((2, 3)) if feats[layer].dim() == 4 else feats[layer]
        assert a.shape == (40, direct.shape[1]) and a.dtype == torch.float32
        torch.testing.assert_close(a, direct, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_pool_and_candidate_layers():
    x = torch.arange(24.0).reshape(2, 3, 2, 2)
    assert torch.equal(pool(x), x.mean((2, 3)))
    assert torch.equal(pool(x[:, :, 0, 0]), x[:, :, 0, 0])
    counts = {"resnet110": 54, "wrn_40_2": 18, "resnet34_imagenet": 16, "resnet20": 9}  # the spec's block counts
    for name, n in counts.items():
        assert len(candidate_layers(build_model(name, num_classes=10))) == n, name
    model = build_model("resnet20", num_classes=10)
    assert candidate_layers(model, ["layer2.?", "layer3"]) == ["layer2.0", "layer2.1", "layer2.2", "layer3"]
    with pytest.raises(LayerError, match="block_names"):
        candidate_layers(nn.Sequential(nn.Conv2d(1, 1, 1)))


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("metric", ["cca", "cka_linear", "cka_rbf", "combined"])
def test_selection_recovers_known_layer_groups(metric):
    net = GroupedNet()
    selection = select_hints(net, random_images(300), k=3, metric=metric, probe=300, rbf_samples=300)
    assert list(selection.assignment) == group_of_layers()
    # centre = the member nearest the group's mean index (ties: the lower index)
    assert selection.centres == [1, 7, 13]
    assert selection.hints == ["blocks.1", "blocks.7", "blocks.13"]
    d = torch.tensor(selection.distances)
    same = torch.tensor(group_of_layers())[:, None] == torch.tensor(group_of_layers())[None, :]
    assert d[same].max() < 1e-3 < d[~same].min()


def test_same_teacher_and_seed_give_the_same_selection():
    model = build_model("resnet20", num_classes=10, in_channels=3)
    copy = build_model("resnet20", num_classes=10, in_channels=3)
    copy.load_state_dict(model.state_dict())  # the same teacher, a separate instance
    data = random_images(200)
    a = select_hints(model, data, k=3, probe=150, seed=5)
    b = select_hints(copy, data, k=3, probe=150, seed=5)
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert drop(a.to_dict()) == drop(b.to_dict())
    other = select_hints(model, data, k=3, probe=150, seed=6)
    assert other.probe["images_sha256"] != a.probe["images_sha256"]  # another seed, another probe set
    assert a.stage_ends == [2, 5, 8] and len(a.layers) == 9 and a.probe["n"] == 150
    with pytest.raises(ConfigError, match="hints.k"):
        select_hints(model, data, k=10, probe=50)
    with pytest.raises(ConfigError, match="hints.metric"):
        select_hints(model, data, k=3, metric="cosine", probe=50)


def test_selection_file_round_trip_and_errors(tmp_path):
    selection = select_hints(GroupedNet(), random_images(100), k=3, probe=100)
    for name in ("s.json", "s.yaml"):
        path = selection.save(tmp_path / name)
        loaded = HintSelection.load(path)
        assert loaded.to_dict() == selection.to_dict()
        assert loaded.hints == selection.hints
    with pytest.raises(HintFileError, match="does not exist"):
        HintSelection.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"layers": []}')
    with pytest.raises(HintFileError, match="not a kdforge hint selection"):
        HintSelection.load(tmp_path / "bad.json")
    broken = selection.to_dict()
    broken["centres"] = [0, 1, 99]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(HintFileError, match="centres"):
        HintSelection.load(tmp_path / "broken.json")
    edited = selection.to_dict()
    edited["hints"] = ["blocks.0", "blocks.7", "blocks.13"]  # edited by hand: not what `centres` say
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(HintFileError, match="edit those"):
        HintSelection.load(tmp_path / "edited.json")


def test_cache_reuses_per_checkpoint_and_notices_a_new_one(tmp_path):
    model = GroupedNet()
    data = random_images(120)
    ckpt = tmp_path / "teacher" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights v1")
    first, path, cached = cached_select(model, ckpt, data, k=3, probe=100)
    assert not cached and path.is_file() and path.parent == ckpt.parent / "hints"
    assert path == cache_file(ckpt, metric="cca", k=3, n=100, seed=0, layers=first.layers, rbf_samples=2000,
                              images=first.probe["images_sha256"])
    again, path2, cached = cached_select(model, ckpt, data, k=3, probe=100)
    assert cached and path2 == path and again.to_dict() == first.to_dict()
    assert first.teacher["checkpoint"] == str(ckpt) and len(first.teacher["fingerprint"]) == 64
    ckpt.write_bytes(b"weights v2")  # a retrained teacher: never the stale selection
    _, _, cached = cached_select(model, ckpt, data, k=3, probe=100)
    assert not cached
    _, other, cached = cached_select(model, ckpt, data, k=2, probe=100)  # other settings, other file
    assert not cached and other != path
    _, again, cached = cached_select(model, ckpt, data, k=3, probe=100)
    assert cached and again == path
    _, elsewhere, cached = cached_select(model, ckpt, random_images(120, seed=1), k=3, probe=100)  # other images
    assert not cached and elsewhere != path


# ----------------------------------------------------------------------------- training runs
COMMON = {
    "data": {"augment": {"crop_padding": 2, "hflip": False}, "batch_size": 32},
    "schedule": {"name": "cosine", "epochs": 1},
    "train": {"progress": False, "tensorboard": False, "device": "cpu", "max_steps": 3},
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hint-teacher")
    train_from_config(config_from_dict({**COMMON, "name": "t", "output_dir": str(out),
                                        "student": {"model": "resnet20"}}))
    return out / "t"


def run_cfg(tmp_path, teacher_dir, name, losses, hints, **extra):
    return config_from_dict({**COMMON, "name": name, "output_dir": str(tmp_path), "student": {"model": "resnet8"},
                             "teacher": {"checkpoint": str(teacher_dir)}, "losses": losses, "hints": hints,
                             **extra})


@pytest.fixture
def seen(monkeypatch):
    """method name -> (teacher layers, student layers), as the engine binds them."""
    from kdforge.methods import Losses

    bound = {}
    original = Losses.bind

    def spy(self, student, teacher):
        original(self, student, teacher)
        for method in self.active():
            bound[method.name] = (list(method.teacher_layers), list(method.student_layers))

    monkeypatch.setattr(Losses, "bind", spy)
    return bound


def test_hints_auto_feeds_every_hint_method(tmp_path, teacher_dir, seen, monkeypatch):
    hint_methods = ("fitnet", "at", "vid", "crd", "nst", "sp")
    losses = {"ce": 1.0, "kd": 1.0, **{name: 1.0 for name in hint_methods}}
    cfg = run_cfg(tmp_path, teacher_dir, "auto", losses, {"select": "auto", "probe": 200})
    train_from_config(cfg)
    saved = HintSelection.load(tmp_path / "auto" / "hints.json")
    assert saved.k == 3 and len(saved.layers) == 9 and saved.probe["n"] == 200
    assert (tmp_path / "auto" / "hints.png").read_bytes()[:4] == b"\x89PNG"  # the run's heat-map
    student_ends = ["layer1", "layer2", "layer3"]
    for name in hint_methods:
        assert seen[name] == (saved.hints, student_ends), name
    assert seen["kd"] == ([], [])
    # cached next to the teacher checkpoint: a second run reuses it without probing again
    cached = list((teacher_dir / "checkpoints" / "hints").glob("last-cca-k3-n200-seed0-*.json"))
    assert len(cached) == 1 and HintSelection.load(cached[0]).hints == saved.hints

    def no_selection(*args, **kwargs):
        raise AssertionError("selected again instead of reusing the cache")

    monkeypatch.setattr("kdforge.hints.cache.select_hints", no_selection)
    train_from_config(run_cfg(tmp_path, teacher_dir, "again", {"ce": 1.0, "at": 1.0}, {"probe": 200}))
    assert seen["at"] == (saved.hints, student_ends)


def test_hints_stage_ends_file_and_explicit_layers(tmp_path, teacher_dir, seen):
    losses = {"ce": 1.0, "at": 1000.0, "fitnet": {"weight": 100.0, "teacher_layers": ["layer3.1"],
                                                  "student_layers": ["layer3"]}}
    train_from_config(run_cfg(tmp_path, teacher_dir, "ends", losses, "stage_ends"))
    assert seen["at"] == (["layer1.2", "layer2.2", "layer3.2"], ["layer1", "layer2", "layer3"])
    assert seen["fitnet"] == (["layer3.1"], ["layer3"])  # its own layers win over the hints
    assert not (tmp_path / "ends" / "hints.json").exists()

    chosen = HintSelection(layers=["layer1.0", "layer2.0", "layer3.0"], channels=[16, 32, 64], metric="cca", k=2,
                           distances=[[0, 1, 1], [1, 0, 1], [1, 1, 0]], centres=[0, 2], assignment=[0, 0, 1],
                           iterations=1, converged=True, teacher={"model": "resnet20"})
    path = chosen.save(tmp_path / "chosen.yaml")
    hints = {"select": str(path), "student_layers": ["layer2", "layer3.0.out_relu:input"]}
    train_from_config(run_cfg(tmp_path, teacher_dir, "file", {"ce": 1.0, "at": 1000.0}, hints))
    assert seen["at"] == (["layer1.0", "layer3.0"], ["layer2", "layer3.0.out_relu:input"])


def test_hints_config_errors(tmp_path, teacher_dir):
    with pytest.raises(ConfigError, match="no loss of this run takes hint layers"):
        train_from_config(run_cfg(tmp_path, teacher_dir, "e1", {"ce": 1.0, "kd": 1.0}, "stage_ends"))
    with pytest.raises(ConfigError, match="set hints.k to 3"):
        train_from_config(run_cfg(tmp_path, teacher_dir, "e2", {"ce": 1.0, "at": 1.0}, {"k": 2, "probe": 100}))
    with pytest.raises(ConfigError, match="one student layer per hint"):
        config_from_dict({"hints": {"k": 2, "student_layers": ["a"]}})
    with pytest.raises(ConfigError, match="hints.metric"):
        config_from_dict({"hints": {"metric": "cosine"}})
    wrong = HintSelection(layers=["nope.0"], channels=[1], metric="cca", k=1, distances=[[0]], centres=[0],
                          assignment=[0], iterations=1, converged=True)
    path = wrong.save(tmp_path / "wrong.json")
    with pytest.raises(HintFileError, match="'nope.0' is not in the teacher"):
        train_from_config(run_cfg(tmp_path, teacher_dir, "e3", {"ce": 1.0, "at": 1.0},
                                  {"select": str(path), "student_layers": ["layer3"]}))
    assert not (tmp_path / "e3").exists()  # nothing written for a refused config
    with pytest.raises(ConfigError, match="hints.probe"):
        config_from_dict({"hints": {"probe": 1}})


def test_overwrite_keeps_the_old_run_when_the_hint_pairs_do_not_fit(tmp_path, teacher_dir):
    cfg = run_cfg(tmp_path, teacher_dir, "keep", {"ce": 1.0, "at": 1000.0}, "stage_ends")
    train_from_config(cfg)
    before = (tmp_path / "keep" / "summary.json").read_text()
    bad = run_cfg(tmp_path, teacher_dir, "keep", {"ce": 1.0, "at": 1000.0},
                  {"select": "stage_ends", "student_layers": ["layer1", "layer2", "fc"]})  # fc: not a map
    with pytest.raises(LayerError, match="at"):
        train_from_config(bad, overwrite=True)
    assert (tmp_path / "keep" / "summary.json").read_text() == before


def test_resumed_run_keeps_its_hints(tmp_path, teacher_dir):
    cfg = run_cfg(tmp_path, teacher_dir, "resume", {"ce": 1.0, "at": 1000.0}, {"probe": 100},
                  train={**COMMON["train"], "max_steps": None}, schedule={"name": "cosine", "epochs": 2},
                  data={**COMMON["data"], "batch_size": 256})
    train_from_config(cfg, until_epoch=1)
    first = (tmp_path / "resume" / "hints.json").read_text()
    for cached in (teacher_dir / "checkpoints" / "hints").glob("*.json"):
        cached.unlink()  # the run's own copy is what a resume reads
    summary = train_from_config(cfg, resume=True)
    assert summary["epochs"] == 2
    assert (tmp_path / "resume" / "hints.json").read_text() == first
    assert not list((teacher_dir / "checkpoints" / "hints").glob("*.json"))


# ----------------------------------------------------------------------------- command line
def test_hints_command_prints_saves_and_draws(tmp_path, teacher_dir, capsys):
    out = tmp_path / "sel.yaml"
    code = main(["hints", str(teacher_dir), "--probe", "120", "--metric", "cka_linear", "--out", str(out),
                 "--no-progress", "--device", "cpu"])
    text = capsys.readouterr().out
    assert code == 0
    saved = HintSelection.load(out)
    assert saved.metric == "cka_linear" and saved.k == 3 and saved.probe["n"] == 120
    for layer in saved.layers:
        assert layer in text
    assert f"hints:      {', '.join(saved.hints)}" in text
    assert "stage ends: layer1.2, layer2.2, layer3.2" in text
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cached = list((teacher_dir / "checkpoints" / "hints").glob("last-cka_linear-k3-n120-*.json"))
    assert len(cached) == 1 and cached[0].with_suffix(".png").is_file()
    # config mode: the run's teacher and data, K from the student's stages, and the cache is reused
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"teacher: {{checkpoint: {teacher_dir}}}\nstudent: {{model: resnet8}}\n"
                   f"hints: {{metric: cka_linear, probe: 120}}\nlosses: {{ce: 1.0, at: 1000.0}}\n")
    code = main(["hints", str(cfg), "--no-progress", "--device", "cpu"])
    assert code == 0 and "from the cache" in capsys.readouterr().out


def test_hints_command_user_errors(tmp_path, teacher_dir, capsys):
    assert main(["hints", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = tmp_path / "noteacher.yaml"
    cfg.write_text("student: {model: resnet8}\n")
    assert main(["hints", str(cfg)]) == 2
    assert "teacher.checkpoint" in capsys.readouterr().err
    assert main(["hints", str(teacher_dir), "--k", "12", "--probe", "20", "--no-progress"]) == 2
    assert "hints.k" in capsys.readouterr().err
    assert main(["hints", str(teacher_dir), "--probe", "1", "--no-progress"]) == 2
    assert "at least 2 images" in capsys.readouterr().err
    assert main(["hints", str(teacher_dir), "--out", str(tmp_path / "sel.png")]) == 2
    assert ".json or .yaml" in capsys.readouterr().err
