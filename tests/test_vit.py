"""Vision transformers as teachers and students (issue 37): token layouts found by the dry run, block outputs as
patch-token maps, every method that can serve a token model trains in both directions, the rest refused in one
line, and DeiT's distillation token. A small ViT of our own (tests/tiny_vit.py): no timm needed here."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdforge.cli import main
from kdforge.config import config_from_dict
from kdforge.engine import train_from_config
from kdforge.features import FeatureTaps
from kdforge.methods import build_method, method_class, method_names
from kdforge.methods.base import StepOutputs
from kdforge.methods.usual import usual_losses
from kdforge.models.inferred_taps import ensure_taps, infer_taps
from kdforge.models.tokens import TokenLayout
from tiny_vit import TinyViT

VIT_FILE = str(Path(__file__).with_name("tiny_vit.py").resolve())
VIT = {"import": f"{VIT_FILE}:build", "kwargs": {"image_size": 32, "depth": 3, "dim": 16}}
DEIT = {"import": f"{VIT_FILE}:build", "kwargs": {"image_size": 32, "depth": 3, "dim": 16, "distilled": True}}


@pytest.mark.parametrize("distilled, prefix", [(False, 1), (True, 2)])
def test_the_dry_run_finds_blocks_stages_classifier_and_token_layout(distilled, prefix):
    model = TinyViT(image_size=32, depth=6, distilled=distilled)
    taps = infer_taps(model, torch.zeros(2, 1, 32, 32))
    assert taps.block_names == [f"blocks.{i}" for i in range(6)]
    assert taps.stage_names == ["blocks.1", "blocks.3", "blocks.5"]  # a third, two thirds, the whole depth
    assert taps.classifier_name == "head"  # also with a distillation head
    assert taps.token_layout == TokenLayout(prefix, (8, 8))
    assert infer_taps(TinyViT(image_size=28, patch=7), torch.zeros(2, 1, 28, 28)).token_layout == TokenLayout(1, (4, 4))


def test_a_cnn_has_no_token_layout_even_with_a_token_mixing_head():
    from test_imported_models import TorchvisionStyleResNet

    assert infer_taps(TorchvisionStyleResNet(), torch.zeros(2, 3, 64, 64)).token_layout is None

    class Mixer(torch.nn.Module):  # attention over the last map's positions: tokens in, tokens out
        def __init__(self, dim):
            super().__init__()
            self.a, self.b = torch.nn.Sequential(torch.nn.Linear(dim, dim)), torch.nn.Sequential(torch.nn.Linear(dim, dim))

        def forward(self, x):
            return self.b(self.a(x))

    class CnnWithMixer(TorchvisionStyleResNet):
        def __init__(self):
            super().__init__()
            self.mix = Mixer(64)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.mix(x.flatten(2).transpose(1, 2)).mean(1)
            return self.fc(x)

    taps = infer_taps(CnnWithMixer(), torch.zeros(2, 3, 64, 64))
    assert taps.token_layout is None and taps.stage_names[-4:] == ["layer1", "layer2", "layer3", "layer4"]


def test_one_block_and_blocks_returning_tuples_are_found():
    one = infer_taps(TinyViT(image_size=32, depth=1), torch.zeros(2, 1, 32, 32))
    assert one.block_names == ["blocks.0"] and one.stage_names == ["blocks.0"] and one.token_layout is not None

    class TupleBlock(torch.nn.Module):  # as Hugging Face's ViT layers return (hidden_states,)
        def __init__(self, block):
            super().__init__()
            self.inner = block

        def forward(self, x):
            return (self.inner(x),)

    class TupleViT(TinyViT):
        def __init__(self):
            super().__init__(image_size=32, depth=4)
            self.layers = torch.nn.ModuleList(TupleBlock(b) for b in self.blocks)
            del self.blocks

        def forward(self, x):
            x = self.patch_embed(x)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
            for layer in self.layers:
                x = layer(x)[0]
            return self.head(self.norm(x)[:, 0])

    taps = infer_taps(TupleViT(), torch.zeros(2, 1, 32, 32))
    assert taps.block_names == [f"layers.{i}" for i in range(4)] and taps.token_layout == TokenLayout(1, (8, 8))


def test_patch_tokens_are_laid_on_their_grid_in_row_major_order():
    layout = TokenLayout(2, (3, 4))
    tokens = torch.randn(5, 2 + 12, 7)
    grid = layout.to_map(tokens)
    assert grid.shape == (5, 7, 3, 4)
    for i in range(3):
        for j in range(4):
            assert torch.equal(grid[:, :, i, j], tokens[:, 2 + 4 * i + j, :])


def test_taps_give_block_outputs_as_maps_and_the_embedding_as_is():
    model = TinyViT(image_size=32, depth=3, dim=16).eval()
    ensure_taps(model, torch.zeros(2, 1, 32, 32))
    images = torch.randn(3, 1, 32, 32)
    raw = {}
    hook = model.blocks[1].register_forward_hook(lambda m, a, out: raw.setdefault("tokens", out))
    with FeatureTaps(model, ["blocks.1", "head:input"]) as taps:
        logits, features = taps(images)
    hook.remove()
    assert torch.equal(features["blocks.1"], model.token_layout.to_map(raw["tokens"]))
    assert features["blocks.1"].shape == (3, 16, 8, 8) and features["head:input"].shape == (3, 16)


def _cfg(root, name, student, losses, teacher=None, steps=2, **train):
    data = {"name": name, "output_dir": str(root), "data": {"batch_size": 16}, "student": student, "losses": losses,
            "optim": {"lr": 0.01}, "schedule": {"name": "constant", "epochs": 1},
            "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu",
                      "max_steps": steps, "log_every": 1, **train}}
    if teacher is not None:
        data["teacher"] = {"checkpoint": str(teacher)}
    return config_from_dict(data)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit_teachers")
    for name, student in (("cnn", {"model": "resnet8"}), ("vit", VIT), ("deit", DEIT)):
        train_from_config(_cfg(root, name, student, {"ce": 1.0}, steps=3))
    return root


#: methods whose layers must have the same channels in both models (FSP, KD-SVD): a ViT with a ViT of its width
SAME_WIDTH = {"fsp", "kdsvd"}
SERVING = [m for m in method_names() if method_class(m).needs_teacher and method_class(m).token_models is None
           and m not in ("deit", "netgraft")]


@pytest.mark.parametrize("method", SERVING)
def test_every_method_that_serves_token_models_trains_a_vit_student_and_from_a_vit_teacher(method, teachers, tmp_path):
    losses = usual_losses(method, 1)
    pairs = [("vit", VIT, "vit")] if method in SAME_WIDTH else [("cnn->vit", VIT, "cnn"),
                                                                  ("vit->cnn", {"model": "resnet8"}, "vit")]
    for label, student, teacher in pairs:
        summary = train_from_config(_cfg(tmp_path, label, student, losses, teachers / teacher))
        log = [json.loads(line) for line in (tmp_path / label / "log.jsonl").read_text().splitlines()]
        steps = [r for r in log if r["kind"] == "step"]
        assert summary["steps"] == 2 and len(steps) == 2, label
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in steps), label


@pytest.mark.parametrize("method", [m for m in method_names() if method_class(m).needs_teacher
                                    and method_class(m).token_models is not None])
def test_a_method_that_cannot_serve_a_token_model_is_refused_in_one_line(method, teachers, tmp_path, capsys):
    for which, student, teacher in (("student", VIT, "cnn"), ("teacher", {"model": "resnet8"}, "vit")):
        cfg = tmp_path / f"{which}.yaml"
        cfg.write_text(json.dumps({"name": which, "output_dir": str(tmp_path), "student": student,
                                   "teacher": {"checkpoint": str(teachers / teacher)},
                                   "losses": usual_losses(method, 1),
                                   "train": {"progress": False, "device": "cpu", "max_steps": 1}}))
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"losses.{method}" in err, which
        assert f"the {which} is a vision transformer" in err or method == "simkd" and which == "teacher", which


# ---------------------------------------------------------------- DeiT
def _deit_outputs(method, model, teacher_logits, images, labels):
    ensure_taps(model, images[:2])
    method.bind(model, None)
    with FeatureTaps(model, method.student_layers) as taps:
        logits, features = taps(images)
    return logits, StepOutputs(images, labels, logits, teacher_logits=teacher_logits, student_features=features)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_deit_loss_is_the_papers_formula(kind):
    model = TinyViT(image_size=32, depth=2, dim=16, distilled=True).eval()
    images, labels = torch.randn(6, 1, 32, 32), torch.randint(0, 10, (6,))
    teacher = torch.randn(6, 10)
    method = build_method("deit", {"kind": kind})
    logits, out = _deit_outputs(method, model, teacher, images, labels)
    with torch.no_grad():  # the two heads, computed directly from the tokens
        x = model.patch_embed(images)
        x = torch.cat([model.cls_token.expand(6, -1, -1), x], dim=1) + model.pos_embed
        x = model.norm(model.blocks(x))
        z_cls, z_dist = model.head(x[:, 0]), model.head_dist(x[:, 1])
    assert torch.allclose(logits, (z_cls + z_dist) / 2, atol=1e-6)  # inference: the mean of both heads
    parts = method(out)
    if kind == "hard":
        assert parts["cls_ce"].item() == pytest.approx(0.5 * F.cross_entropy(z_cls, labels).item(), rel=1e-5)
        assert parts["dist_ce"].item() == pytest.approx(
            0.5 * F.cross_entropy(z_dist, teacher.argmax(1)).item(), rel=1e-5)
    else:
        p_t = F.softmax(teacher / 3, dim=1)
        kl = (p_t * (p_t.log() - F.log_softmax(z_dist / 3, dim=1))).sum(1).mean() * 9
        assert parts["cls_ce"].item() == pytest.approx(0.9 * F.cross_entropy(z_cls, labels).item(), rel=1e-5)
        assert parts["dist_kl"].item() == pytest.approx(0.1 * kl.item(), rel=1e-4)


def test_deit_trains_each_head_from_its_own_target(teachers, tmp_path):
    """Hard DeiT from a CNN teacher: the run trains, and the class head learns only from the labels, the
    distillation head only from the teacher (each term's gradient reaches its own head alone)."""
    model = TinyViT(image_size=32, depth=2, dim=16, distilled=True)
    images, labels = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    method = build_method("deit", {})
    _, out = _deit_outputs(method, model, torch.randn(4, 10), images, labels)
    parts = method(out)
    grads = torch.autograd.grad(parts["cls_ce"], [model.head.weight, model.head_dist.weight], allow_unused=True)
    assert grads[0].abs().sum() > 0 and grads[1] is None
    grads = torch.autograd.grad(parts["dist_ce"], [model.head.weight, model.head_dist.weight], allow_unused=True)
    assert grads[0] is None and grads[1].abs().sum() > 0
    summary = train_from_config(_cfg(tmp_path, "deit", DEIT, {"deit": 1.0}, teachers / "cnn", steps=3))
    assert summary["steps"] == 3 and summary["losses"] == {"deit": 1.0}


def test_a_deit_student_exports_as_one_network_giving_the_mean_of_its_heads(teachers, tmp_path):
    from kdforge.deploy.export import export_model
    from kdforge.engine.checkpoint import load_model

    train_from_config(_cfg(tmp_path, "deit", DEIT, {"deit": {"weight": 1.0, "kind": "soft"}}, teachers / "vit"))
    result = export_model(tmp_path / "deit", format="torchscript", out=tmp_path / "deit.ts")
    scripted = torch.jit.load(result["path"])
    model, _ = load_model(tmp_path / "deit")
    images = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(images), model.eval()(images), atol=1e-5)


def test_deit_needs_a_distillation_head(teachers, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(json.dumps({"name": "x", "output_dir": str(tmp_path), "student": VIT,
                               "teacher": {"checkpoint": str(teachers / "cnn")}, "losses": {"deit": 1.0},
                               "train": {"progress": False, "device": "cpu", "max_steps": 1}}))
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'head_dist'" in err and "distillation token" in err
