import json

import numpy as np

from PIL import Image

from kdforge.recipes.quickstart import run_quickstart
from kdforge.recipes.stats import mean_std
from kdforge.report.figures import CURVES_PX, SCATTER_PX


def test_mean_std_is_sample_std():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == 7 / 3
    assert abs(std - (((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2) ** 0.5) < 1e-12


def test_quickstart_chains_runs_and_reports(tmp_path):
    result = run_quickstart(tmp_path, seeds=(0, 1), epochs=1, progress=False,
                            overrides={"train": {"max_steps": 3, "tensorboard": False, "device": "cpu"}})
    # one report row per role, in role order, each the mean of that role's two seeds
    assert [g["label"] for g in result["groups"]] == ["teacher", "student-alone", "student-KD"]
    for group in result["groups"]:
        summaries = [json.loads((tmp_path / f"{group['label']}-seed{s}" / "summary.json").read_text())
                     for s in (0, 1)]
        assert group["metrics"]["top1_last"]["values"] == [s["top1_last"] for s in summaries]
        assert group["metrics"]["top1_last"]["mean"] == mean_std([s["top1_last"] for s in summaries])[0]
    kd = json.loads((tmp_path / "student-KD-seed1" / "summary.json").read_text())
    assert kd["teacher"] == str(tmp_path / "teacher-seed1")  # seed s distils from teacher s
    # ... from its last epoch, never a best.pt chosen on the test split
    assert kd["teacher_checkpoint"]["file"] == str(tmp_path / "teacher-seed1" / "checkpoints" / "last.pt")
    report = tmp_path / "report"
    assert "| student-KD | ce+kd | resnet20 (last.pt) | resnet8 |" in (report / "report.md").read_text()
    assert result["files"]["html"] == str(report / "report.html")
    # the report's pictures: the size the figures are made at, and not blank
    for name, size in (("curves.png", CURVES_PX), ("scatter.png", SCATTER_PX)):
        image = Image.open(report / name)
        pixels = np.asarray(image.convert("L"))
        assert image.size == size, name
        assert len(np.unique(pixels)) > 10 and pixels.std() > 10, name


def test_quickstart_is_restartable_and_refuses_a_folder_of_other_settings(tmp_path, monkeypatch):
    """Run again, it reuses every finished run (no training); other epochs in the same folder are an error
    that names the setting; `fresh` trains again."""
    import pytest

    from kdforge.engine import trainer as trainer_module
    from kdforge.errors import ConfigError

    quick = {"train": {"max_steps": 2, "tensorboard": False, "device": "cpu"}}
    first = run_quickstart(tmp_path, seeds=(0,), epochs=1, progress=False, overrides=quick)
    fits = []
    fit = trainer_module.Trainer.fit
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self, *a, **k: fits.append(1) or fit(self, *a, **k))
    again = run_quickstart(tmp_path, seeds=(0,), epochs=1, progress=False, overrides=quick)
    assert fits == [] and again["table"] == first["table"]
    with pytest.raises(ConfigError, match="schedule"):
        run_quickstart(tmp_path, seeds=(0,), epochs=2, progress=False, overrides=quick)
    run_quickstart(tmp_path, seeds=(0,), epochs=2, progress=False, overrides=quick, fresh=True)
    assert len(fits) == 3
