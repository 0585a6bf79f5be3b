"""Models that are not in the zoo: `student/teacher: {import: "module:factory" | "file.py:factory", kwargs}` and
an `nn.Module` passed from Python, with stages inferred by a dry run (`models/imported.py`, `inferred_taps.py`)."""

import json
import textwrap

import pytest
import torch
from test_export import run_cli, tiny_run
from torch import nn

from kdforge.config import config_from_dict
from kdforge.deploy.export import export_model
from kdforge.deploy.predict import load_deployed
from kdforge.engine import Trainer
from kdforge.engine.checkpoint import load_model
from kdforge.errors import ConfigError
from kdforge.methods import Losses
from kdforge.models.imported import build_imported, display_name
from kdforge.models.inferred_taps import infer_taps

NET = textwrap.dedent('''
    import torch
    from torch import nn

    def unit(i, o, stride=1):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class Net(nn.Module):
        """Three resolutions (32, 16, 8 on digits), as resnet8."""
        def __init__(self, num_classes, in_channels, width):
            super().__init__()
            self.stem = unit(in_channels, width)
            self.stage1 = nn.Sequential(unit(width, width), unit(width, width))
            self.stage2 = nn.Sequential(unit(width, 2 * width, 2), unit(2 * width, 2 * width))
            self.stage3 = nn.Sequential(unit(2 * width, 4 * width, 2), unit(4 * width, 4 * width))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            x = self.stage3(self.stage2(self.stage1(self.stem(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    def make(num_classes, in_channels, width=8):
        return Net(num_classes, in_channels, width)

    def thousand(width=4):
        return Net(1000, 1, width)

    class Picky(nn.Module):
        def forward(self, x):
            assert x.shape[-1] == 224, "input size must be 224"
            return x.mean(dim=(2, 3))

    def picky():
        return Picky()

    def broken(name="nope"):
        raise RuntimeError(f"Unknown model ({name})\\nsee the list")
''')


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user_code") / "usernet.py"
    path.write_text(NET)
    return path


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("imported_teacher"), "teacher", {"model": "resnet8"}, {"ce": 1},
                    max_steps=6)[0]


@pytest.fixture(scope="module")
def kd_at_run(tmp_path_factory, net_file, teacher_run):
    """A few KD + AT steps of the file's model (width 4) taught by resnet8, layers all inferred."""
    from kdforge.engine import train_from_config

    root = tmp_path_factory.mktemp("imported_student")
    summary = train_from_config(config_from_dict({
        "name": "student", "output_dir": str(root), "data": {"batch_size": 32},
        "student": {"import": f"{net_file}:make", "kwargs": {"width": 4}}, "teacher": {"checkpoint": str(teacher_run)},
        "losses": {"ce": 1, "kd": 1, "at": 10}, "optim": {"lr": 0.1}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "max_steps": 6}}))
    return root / "student", summary


class TorchvisionStyleResNet(nn.Module):
    """torchvision's ResNet shape (a stem at 1/2, a max-pool, four `layerN` stages, a ReLU shared inside each block)
    in miniature, written here."""

    class Block(nn.Module):
        def __init__(self, i, o, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o)
            self.relu = nn.ReLU(inplace=True)
            self.conv2, self.bn2 = nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o)
            self.downsample = (nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))
                               if stride != 1 or i != o else None)

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, i = [8, 16, 32, 64], 8
        for k, w in enumerate(widths):
            setattr(self, f"layer{k + 1}", nn.Sequential(self.Block(i, w, 1 if k == 0 else 2), self.Block(w, w, 1)))
            i = w
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_stages_are_the_last_module_at_each_resolution_and_the_embedding_the_classifier_input():
    taps = infer_taps(TorchvisionStyleResNet(), torch.zeros(2, 3, 64, 64))
    # 32x32 ends with the stem's ReLU; 16x16 (max-pool, then layer1) with layer1; ...; the 1x1 pool is no stage
    assert taps.stage_names == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert taps.block_names == ["relu"] + [f"layer{k}.{b}" for k in range(1, 5) for b in (0, 1)]
    assert taps.classifier_name == "fc" and taps.logits_shape == (10,)


@pytest.mark.parametrize("name, size", [("resnet50_imagenet", 64), ("resnet18_imagenet", 64), ("resnet56", 32)])
def test_inferred_stages_of_zoo_resnets_are_their_own(name, size):
    """The zoo names its stages; inferred from a dry run they are the same (plus the stem where it has its own
    resolution), bottleneck blocks included: their 1x1 expansion returns at the previous stage's size."""
    from kdforge.models import build_model

    model = build_model(name, num_classes=10)
    taps = infer_taps(model, torch.zeros(2, 3, size, size))
    stem = ["relu"] if name.endswith("imagenet") else []  # ImageNet ResNets' stem is at half the input size
    assert taps.stage_names == stem + model.stage_names
    assert taps.block_names == stem + model.block_names and taps.classifier_name == model.classifier_name


def test_a_vgg_whose_stages_are_sequentials_ending_in_a_pool_has_one_stage_per_resolution():
    """vgg16_nobn's `layerN` are plain Sequentials (units, then a max-pool): a Sequential is no block, so the last
    unit before each pool ends its resolution (the zoo names the pooled outputs instead)."""
    from kdforge.features import layer_shapes
    from kdforge.models import build_model

    model = build_model("vgg16_nobn", num_classes=10)
    taps = infer_taps(model, torch.zeros(2, 3, 32, 32))
    shapes = {name: shape for name, _, shape in layer_shapes(model, torch.zeros(1, 3, 32, 32))}
    assert [shapes[s][1] for s in taps.stage_names] == [32, 16, 8, 4, 2]
    assert taps.stage_names == ["layer1.1", "layer2.1", "layer3.2", "layer4.2", "layer5.2"]


def test_a_file_factory_gets_the_class_count_and_channels_and_records_its_spec(net_file):
    model = build_imported(f"{net_file}:make", {"width": 4}, num_classes=7, in_channels=2, image_size=16)
    assert model.fc.out_features == 7 and model.stem[0].in_channels == 2 and model.fc.in_features == 16
    assert model.stage_names == ["stage1", "stage2", "stage3"]  # the stem's 16x16 ends in stage1 (same size)
    assert model.block_names == ["stage1.0", "stage1.1", "stage2.0", "stage2.1", "stage3.0", "stage3.1"]
    assert model.zoo_record == {"name": "usernet.make", "import": f"{net_file.resolve()}:make",
                                "kwargs": {"width": 4}, "num_classes": 7, "in_channels": 2, "image_size": 16}
    assert display_name("timm:create_model") == "timm.create_model"


def test_a_module_path_builds_the_same_model(net_file, monkeypatch):
    monkeypatch.syspath_prepend(str(net_file.parent))
    torch.manual_seed(3)
    by_module = build_imported("usernet:make", {}, num_classes=10, in_channels=1, image_size=8)
    torch.manual_seed(3)
    by_file = build_imported(f"{net_file}:make", {}, num_classes=10, in_channels=1, image_size=8)
    x = torch.randn(3, 1, 8, 8)
    by_module.eval(), by_file.eval()
    assert torch.equal(by_module(x), by_file(x))
    assert by_module.zoo_record["import"] == "usernet:make"


def test_kd_and_at_train_an_imported_student_with_inferred_layers(kd_at_run, net_file):
    folder, summary = kd_at_run
    assert summary["student"] == "usernet.make"
    model, ckpt = load_model(folder, "last")  # rebuilt from the recorded spec alone
    assert ckpt["model"]["import"] == f"{net_file.resolve()}:make"
    assert model.stage_names == ["stage1", "stage2", "stage3"]
    config = config_from_dict({"student": {"import": f"{net_file}:make"}, "teacher": {"model": "resnet8"},
                               "losses": {"at": 1}})
    at = Losses.from_config(config.losses).methods["at"]
    teacher, _ = load_model(ckpt["config"]["teacher"]["checkpoint"], "last")
    at.bind(model, teacher)
    assert at.student_layers == ["stage1", "stage2", "stage3"]  # AT's default: every stage, paired from the end
    epoch, = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert epoch["step"] == 6 and epoch["train_kd"] > 0 and epoch["train_at"] > 0  # both losses ran


@pytest.mark.parametrize("fmt", ["state_dict", "torchscript", "onnx"])
def test_an_imported_student_exports_and_predicts_as_the_pytorch_model(kd_at_run, tmp_path, capsys, fmt):
    import numpy as np
    from PIL import Image

    from kdforge.data import load_dataset, normalize

    folder, _ = kd_at_run
    result = export_model(folder, format=fmt, out=tmp_path / f"student.{fmt}")
    assert result["model"] == "usernet.make"
    digits = load_dataset("digits", None, "test")
    png = tmp_path / "digit.png"
    Image.fromarray(digits.images[4, 0].numpy()).save(png)
    model, _ = load_model(folder, "last")
    model.eval()
    with torch.no_grad():
        want = torch.softmax(model(normalize(digits.images[4:5], digits.mean, digits.std)), 1)[0]
    load_deployed(result["path"])  # the file loads on its own
    code, out, err = run_cli(capsys, "predict", result["path"], png)
    assert code == 0, err
    top = int(want.argmax())
    assert out.startswith(f"{png}: {top} ({100 * want[top].item():.1f}%)")
    assert np.isfinite(result["max_abs_diff"] or 0.0)


def test_eval_report_and_layers_commands_on_an_imported_model(kd_at_run, net_file, capsys, tmp_path):
    folder, _ = kd_at_run
    code, out, err = run_cli(capsys, "eval", folder)
    assert code == 0 and out.startswith("usernet.make on digits/test"), err
    code, out, err = run_cli(capsys, "report", folder, "--out", tmp_path / "report")
    assert code == 0, err
    row = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "usernet.make" in json.dumps(row)
    code, out, err = run_cli(capsys, "layers", f"{net_file}:make", "--in-channels", "1", "--input-size", "32",
                             "--num-classes", "10", "--kwargs", '{"width": 4}')
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[3:] if line.strip() and " " in line}
    assert rows["stage3"][-3:] == ["16x8x8", "stage", "end"] and rows["fc"][-1] == "classifier"
    assert "inferred by a dry run" in out and "'fc:input'" in out


def test_a_module_passed_from_python_gets_inferred_layers_for_at(digits_head, tmp_path, net_file, teacher_run):
    student = build_imported(f"{net_file}:make", {}, num_classes=10, in_channels=1, image_size=32)
    for attr in ("stage_names", "block_names", "classifier_name", "zoo_record"):
        delattr(student, attr)  # as a user's own module arrives: nothing kdforge set
    teacher, _ = load_model(teacher_run, "last")
    cfg = config_from_dict({"name": "python-module", "output_dir": str(tmp_path), "data": {"batch_size": 16},
                            "losses": {"at": 1}, "schedule": {"epochs": 1},
                            "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu",
                                      "max_steps": 2}})
    trainer = Trainer(student, Losses.from_config(cfg.losses), *digits_head(64, 32), teacher=teacher, config=cfg,
                      run_dir=tmp_path / "python-module")
    trainer.prepare()
    assert student.stage_names == ["stage1", "stage2", "stage3"]
    assert trainer.losses.methods["at"].student_layers == ["stage1", "stage2", "stage3"]


@pytest.mark.parametrize("spec, kwargs, message", [
    ("no_colon", {}, "student.import: 'no_colon' is not 'package.module:factory' or 'path/to/file.py:factory'"),
    ("kdforge_no_such_module:make", {}, "student.import: cannot import module 'kdforge_no_such_module'"),
    ("{file}:missing", {}, "student.import: {file} has no 'missing'"),
    ("{file}:make", {"depth": 3}, "student.import: {file}:make(**kwargs) failed: "),
    ("{file}:thousand", {}, "the model outputs 1000 classes but the data has 10: pass the class count in kwargs"),
    ("/nowhere/net.py:make", {}, "student.import: file '/nowhere/net.py' does not exist"),
    ("{file}:broken", {}, "student.import: {file}:broken(**kwargs) failed: RuntimeError: Unknown model (nope)"),
    ("{file}:picky", {}, "student.import: a (1, 32, 32) image does not run through the model: AssertionError: "
                         "input size must be 224"),
])
def test_bad_import_specs_fail_in_one_line(net_file, tmp_path, spec, kwargs, message):
    spec, message = spec.format(file=net_file), message.format(file=net_file)
    with pytest.raises(ConfigError) as caught:
        cfg = config_from_dict({"name": "bad", "output_dir": str(tmp_path), "losses": {"ce": 1},
                                "student": {"import": spec, "kwargs": kwargs},
                                "train": {"progress": False, "tensorboard": False, "device": "cpu"}})
        from kdforge.engine import train_from_config
        train_from_config(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_import_and_zoo_keys_do_not_mix():
    with pytest.raises(ConfigError, match="student: give either import .* or model .*, not both"):
        config_from_dict({"student": {"import": "a:b", "model": "resnet8"}})
    with pytest.raises(ConfigError, match="student.kwargs: keyword arguments of an import factory"):
        config_from_dict({"student": {"model": "resnet8", "kwargs": {"width": 2}}})
    cfg = config_from_dict({"student": {"import": "a.b:make"}})  # the default zoo student does not leak in
    assert cfg.student.model is None and cfg.student.import_ == "a.b:make"


def test_an_imported_run_is_a_teacher_by_its_folder_alone(kd_at_run, tmp_path):
    """`teacher: {checkpoint: RUN}` with no import: the run's recorded spec rebuilds the model, its weights loaded."""
    from kdforge.engine import train_from_config

    folder, _ = kd_at_run
    summary = train_from_config(config_from_dict({
        "name": "from-imported", "output_dir": str(tmp_path), "teacher": {"checkpoint": str(folder)},
        "losses": {"ce": 1, "kd": 1}, "schedule": {"name": "constant", "epochs": 1},
        "train": {"progress": False, "tensorboard": False, "precision": "fp32", "device": "cpu", "max_steps": 2}}))
    assert summary["teacher_model"] == "usernet.make" and summary["steps"] == 2
    teacher, _ = load_model(folder, "last")
    assert summary["teacher_checkpoint"]["file"] == str(folder / "checkpoints" / "last.pt")
    assert teacher.stage_names == ["stage1", "stage2", "stage3"]
