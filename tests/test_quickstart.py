import json

import numpy as np

from PIL import Image

from kdforge.recipes.quickstart import run_quickstart
from kdforge.recipes.stats import mean_std


def test_mean_std_is_sample_std():
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == 7 / 3
    assert abs(std - (((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2) ** 0.5) < 1e-12


def test_quickstart_chains_runs_and_reports(tmp_path):
    result = run_quickstart(tmp_path, seeds=(0, 1), epochs=1, progress=False,
                            overrides={"train": {"max_steps": 3, "tensorboard": False, "device": "cpu"}})
    assert [r["run"] for r in result["rows"]] == ["teacher", "student alone", "student + KD"]
    for row in result["rows"]:
        summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))
                     if p.parent.name.startswith(row["run"].replace(" + ", "-").replace(" ", "-") + "-seed")]
        assert len(summaries) == 2
        assert row["top1"] == [s["top1_last"] for s in summaries]
    kd = json.loads((tmp_path / "student-KD-seed1" / "summary.json").read_text())
    assert kd["teacher"] == str(tmp_path / "teacher-seed1")  # seed s distils from teacher s
    assert "| student + KD |" in (tmp_path / "results.md").read_text()
    image = Image.open(result["curves"])
    pixels = np.asarray(image.convert("L"))
    assert image.size[0] > 500 and len(np.unique(pixels)) > 10  # not blank
