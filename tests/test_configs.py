from pathlib import Path

import pytest

from kdforge.config import load_config
from kdforge.methods import LossComposer
from kdforge.models import model_names

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.student.model in model_names()
    LossComposer.from_config(cfg.losses)  # every method and parameter exists


def test_there_are_configs():
    assert len(CONFIGS) >= 4
