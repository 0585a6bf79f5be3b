"""`kdforge attention`: the mean layer attention of trained AFD / RTK runs, and the AFD / RTK configs."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from kdforge.cli import main
from kdforge.config import config_from_dict, load_config
from kdforge.data import load_dataset
from kdforge.data.augment import normalize
from kdforge.data.registry import dataset_names, dataset_spec
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import load_model
from kdforge.methods import Losses
from kdforge.methods.afd import LayerAttention
from kdforge.models import build_model, model_names

COMMON = {"data": {"augment": {"crop_padding": 2, "hflip": False}, "batch_size": 32, "eval_batch_size": 32},
          "schedule": {"name": "cosine", "epochs": 1},
          "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32", "log_every": 5,
                    "max_steps": 5}}
LOSSES = {"afd": {"ce": 1.0, "afd": 200.0}, "rtk": {"ce": 1.0, "rtk": {"weight": 200.0, "top_k": 2}}}
PROBE = 70  # three batches of 32, the last one partial


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention")
    train_from_config(config_from_dict({**COMMON, "name": "teacher", "output_dir": str(out),
                                        "student": {"model": "resnet14"}, "losses": {"ce": 1.0}}))
    for name, losses in LOSSES.items():
        train_from_config(config_from_dict({**COMMON, "name": name, "output_dir": str(out), "seed": 1,
                                            "student": {"model": "resnet8"},
                                            "teacher": {"checkpoint": str(out / "teacher")}, "losses": losses}))
    return out


def independent(run_dir: Path, key: str, rows: list[str], cols: list[str], probe: int):
    """Mean alpha (and keep frequency) computed from the checkpoint by hand, without the trainer."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    record = ckpt["model"]
    student = build_model(record["name"], num_classes=record["num_classes"], in_channels=record["in_channels"])
    student.load_state_dict(ckpt["student"])
    teacher, _ = load_model(ckpt["config"]["teacher"]["checkpoint"])
    spec = ckpt["config"]["losses"][key]
    method = "afd" if key == "afd" else "rtk"
    t_names, s_names = (rows, cols) if method == "afd" else (cols, rows)
    test = load_dataset("digits", None, "test")
    images = normalize(test.images[:probe], test.mean, test.std)

    def features(model, names):
        found, modules = {}, dict(model.named_modules())
        hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: found.__setitem__(n, o)) for n in names]
        model.eval()
        with torch.no_grad():
            model(images)
        for h in hooks:
            h.remove()
        return [found[n] for n in names]

    s_feats, t_feats = features(student, s_names), features(teacher, t_names)
    prefix = f"methods.{key}.attention."
    state = {k[len(prefix):]: v for k, v in ckpt["losses"].items() if k.startswith(prefix)}
    q, k = (t_feats, s_feats) if method == "afd" else (s_feats, t_feats)
    attention = LayerAttention([f.shape[1] for f in q], [f.shape[1] for f in k])
    attention.load_state_dict(state)
    attention.eval()
    with torch.no_grad():
        logits = attention(q, k).double()
    if method == "afd":
        return F.softmax(logits, dim=2).mean(0), None
    logits = logits / spec.get("temperature", 1.0)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(spec["top_k"], dim=-1).indices, True)
    alpha = F.softmax(logits.masked_fill(~keep, float("-inf")), dim=2)
    return alpha.mean(0), keep.double().mean(0)


@pytest.mark.parametrize("name", ["afd", "rtk"])
def test_attention_matrices_match_an_independent_computation(name, runs, tmp_path, capsys):
    out = tmp_path / "pics" / f"{name}.png"
    assert main(["attention", str(runs / name), "--probe", str(PROBE), "--device", "cpu", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["probe"] == PROBE and data["split"] == "test" and list(data["losses"]) == [name]
    got = data["losses"][name]
    assert (got["row_role"], got["col_role"]) == (("teacher", "student") if name == "afd" else ("student", "teacher"))
    alpha, kept = independent(runs / name, name, got["rows"], got["cols"], PROBE)
    mean = torch.tensor(got["mean_alpha"], dtype=torch.float64)
    assert mean.shape == (len(got["rows"]), len(got["cols"]))
    assert torch.allclose(mean, alpha, atol=1e-5)
    assert torch.allclose(mean.sum(1), torch.ones(len(got["rows"]), dtype=torch.float64), atol=1e-6)
    if name == "rtk":
        freq = torch.tensor(got["keep_frequency"], dtype=torch.float64)
        assert ((freq >= 0) & (freq <= 1)).all()
        assert torch.allclose(freq, kept, atol=1e-9)
        expected = min(got["params"]["top_k"], len(got["cols"]))
        assert torch.allclose(freq.sum(1), torch.full((len(got["rows"]),), float(expected), dtype=torch.float64))
        assert (mean[freq == 0] == 0).all()  # never kept: never weighted
    else:
        assert got["keep_frequency"] is None
    image = plt.imread(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.ndim == 3 and min(image.shape[:2]) > 100
    for row in got["rows"]:  # the summary names every row layer with its strongest column
        best = got["cols"][max(range(len(got["cols"])), key=lambda j: got["mean_alpha"][got["rows"].index(row)][j])]
        assert any(line.split()[:3] == [row, "->", best] for line in text.splitlines())


def test_default_output_goes_into_the_run_folder(runs, capsys):
    assert main(["attention", str(runs / "rtk"), "--probe", "8", "--device", "cpu", "--loss", "rtk",
                 "--which", "best"]) == 0
    assert (runs / "rtk" / "attention.png").is_file() and (runs / "rtk" / "attention.json").is_file()
    assert "heat-map:" in capsys.readouterr().out


def test_errors_for_a_run_without_attention_and_a_bad_loss(runs, tmp_path, capsys):
    assert main(["attention", str(runs / "teacher"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no layer-attention loss" in err
    assert main(["attention", str(runs / "afd"), "--loss", "rtk", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--loss rtk" in err and "afd" in err
    assert main(["attention", str(runs / "afd"), "--out", str(tmp_path / "x.jpg")]) == 2
    assert not (runs / "teacher" / "attention.png").exists()


# ---------------------------------------------------------------- configs
CONFIGS = Path(__file__).parent.parent / "configs"
DATASETS = {"cifar100": ("train", "test"), "cifar10": ("train", "test"), "svhn": ("train", "test"),
            "cinic10": ("train", "test")}
PAIRS = {"cifar100": {"wrn_40_2-wrn_16_2", "wrn_40_2-wrn_40_1", "resnet56-resnet20", "resnet110-resnet32"}}


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_afd_rtk_configs_validate(dataset):
    folder = CONFIGS / dataset / "afd_rtk"
    files = sorted(folder.glob("*.yaml"))
    runs = [f for f in files if not f.stem.startswith("teacher-")]
    pairs = PAIRS.get(dataset, {"wrn_40_2-wrn_16_2", "resnet56-resnet20"})
    methods = {"at", "afd", "rtk"} if dataset == "cifar100" else {"afd", "rtk"}
    assert {f.stem for f in runs} == {f"{p}-{m}" for p in pairs for m in methods}
    for path in files:
        cfg = load_config([CONFIGS / dataset / "base.yaml", path])
        assert cfg.student.model in model_names()
        Losses.from_config(cfg.losses)
        assert cfg.data.name == dataset and dataset in dataset_names()
        splits = dataset_spec(dataset).splits
        assert (cfg.data.train_split, cfg.data.eval_split) == DATASETS[dataset]
        assert cfg.data.train_split in splits and cfg.data.eval_split in splits
        assert cfg.schedule.milestones == [150, 180, 210] and cfg.schedule.epochs == 240
        assert cfg.data.augment.hflip == (dataset != "svhn")
        if path in runs:
            teacher, student, method = path.stem.split("-")
            assert cfg.student.model == student and cfg.name == f"{dataset}-{method}-{teacher}-{student}"
            assert cfg.teacher.checkpoint == f"runs/{dataset}-teacher-{teacher}"
            teacher_file = (CONFIGS / "cifar100" / "teachers" / f"{teacher}.yaml" if dataset == "cifar100"
                            else folder / f"teacher-{teacher}.yaml")
            assert load_config([CONFIGS / dataset / "base.yaml", teacher_file]).name == f"{dataset}-teacher-{teacher}"
            assert cfg.losses["ce"] == 1.0 and cfg.losses["kd"] == {"weight": 0.9, "T": 4.0}
            beta = {"at": 1000.0, "afd": 200.0, "rtk": 200.0}[method]
            spec = cfg.losses[method]
            assert (spec if isinstance(spec, float) else spec["weight"]) == beta
            assert set(cfg.losses) == {"ce", "kd", method}
        else:
            assert cfg.student.model == path.stem.split("-", 1)[1] and set(cfg.losses) == {"ce"}
