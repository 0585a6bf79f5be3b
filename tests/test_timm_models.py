"""timm's own vision transformers (ViT, DeiT with its distillation token) as kdforge students and teachers, built
through `import: timm:create_model` with tiny settings (no download). timm imports here through the torchvision
schemas tests/conftest.py defines."""

import json

import pytest
import timm  # noqa: F401  (the test extra installs it; an ImportError here is a set-up fault, not a skip)
import torch

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.engine.checkpoint import load_model
from kdforge.models.imported import build_imported
from kdforge.models.tokens import TokenLayout

TINY = {"img_size": 32, "patch_size": 4, "in_chans": 1, "num_classes": 10, "depth": 2, "embed_dim": 32,
        "num_heads": 2}
VIT = {"import": "timm:create_model", "kwargs": {"model_name": "vit_tiny_patch16_224", **TINY}}
DEIT = {"import": "timm:create_model", "kwargs": {"model_name": "deit_tiny_distilled_patch16_224", **TINY}}


def _cfg(root, name, student, losses, teacher=None, steps=2):
    data = {"name": name, "output_dir": str(root), "data": {"batch_size": 16}, "student": student, "losses": losses,
            "optim": {"lr": 0.01}, "schedule": {"name": "constant", "epochs": 1},
            "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu",
                      "max_steps": steps}}
    if teacher is not None:
        data["teacher"] = {"checkpoint": str(teacher)}
    return config_from_dict(data)


@pytest.mark.parametrize("spec, prefix", [(VIT, 1), (DEIT, 2)])
def test_timm_transformers_get_their_blocks_and_token_layout(spec, prefix):
    model = build_imported(spec["import"], spec["kwargs"], num_classes=10, in_channels=1, image_size=32)
    assert model.block_names == ["blocks.0", "blocks.1"] and model.stage_names == ["blocks.0", "blocks.1"]
    assert model.classifier_name == "head" and model.token_layout == TokenLayout(prefix, (8, 8))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_teachers")
    train_from_config(_cfg(root, "cnn", {"model": "resnet8"}, {"ce": 1.0}, steps=3))
    train_from_config(_cfg(root, "vit", VIT, {"ce": 1.0}, steps=3))
    return root


def test_a_timm_vit_learns_from_a_cnn_and_teaches_one_with_feature_methods(teachers, tmp_path):
    losses = {"ce": 1.0, "kd": {"weight": 1.0, "T": 4.0}, "at": 100.0, "fitnet": 10.0}
    student = train_from_config(_cfg(tmp_path, "vit-student", VIT, losses, teachers / "cnn"))
    teacher = train_from_config(_cfg(tmp_path, "cnn-student", {"model": "resnet8"}, losses, teachers / "vit"))
    assert student["steps"] == teacher["steps"] == 2
    for run in ("vit-student", "cnn-student"):
        epoch = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()
                 if json.loads(line)["kind"] == "epoch"][-1]
        assert all(torch.isfinite(torch.tensor(epoch[f"train_{k}"])) and epoch[f"train_{k}"] > 0
                   for k in ("kd", "at", "fitnet")), run
    model, _ = load_model(tmp_path / "vit-student")  # rebuilt from the recorded import spec
    assert type(model).__name__ == "VisionTransformer" and model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_deit_distils_into_timms_distilled_transformer(teachers, tmp_path):
    summary = train_from_config(_cfg(tmp_path, "deit", DEIT, {"deit": 1.0}, teachers / "cnn"))
    assert summary["steps"] == 2
    model, _ = load_model(tmp_path / "deit")
    model.eval()
    images = torch.randn(2, 1, 32, 32)
    heads = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, a, out, name=name: heads.setdefault(name, out))
             for name in ("head", "head_dist")]
    with torch.no_grad():
        logits = model(images)
    for hook in hooks:
        hook.remove()
    assert torch.allclose(logits, (heads["head"] + heads["head_dist"]) / 2, atol=1e-6)


def test_a_timm_model_name_that_does_not_exist_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "x", "output_dir": str(tmp_path), "losses": {"ce": 1.0},
                               "student": {"import": "timm:create_model", "kwargs": {"model_name": "vit_nope"}},
                               "train": {"progress": False, "device": "cpu", "max_steps": 1}}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vit_nope" in err and "student.import" in err


def test_layers_command_says_where_the_tokens_are(capsys):
    kwargs = json.dumps(VIT["kwargs"])
    assert main(["layers", "timm:create_model", "--kwargs", kwargs, "--input-size", "32", "--in-channels", "1",
                 "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "1 class/distillation token(s), then 8x8 patch tokens" in out and "(N, D, 8, 8)" in out
    assert "blocks.1            Block       65x32         stage end" in out


def test_a_package_whose_import_fails_on_torchvision_ops_says_why(tmp_path, monkeypatch, capsys):
    """What a user meets where pip paired a CUDA torchvision with the CPU torch (timm imports torchvision)."""
    (tmp_path / "brokenvision.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "x", "output_dir": str(tmp_path), "losses": {"ce": 1.0},
                               "student": {"import": "brokenvision:create_model"},
                               "train": {"progress": False, "device": "cpu", "max_steps": 1}}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "importing 'brokenvision' failed" in err and "matches torch" in err
