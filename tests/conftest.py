import os

import pytest
import torch

os.environ.setdefault("KDFORGE_TEST", "1")


# timm (tests/test_timm_models.py) imports torchvision; where pip brought its CUDA build beside our CPU torch, its
# compiled ops do not load and the import fails ("operator torchvision::nms does not exist"): kdforge defines the
# two op schemas it needs to import (classification models never call them), so those tests run, not skip
from kdforge.models.torchvision_ops import allow_torchvision_without_its_ops  # noqa: E402

allow_torchvision_without_its_ops()
# one thread per pytest-xdist worker (`make test` runs one worker per core), else at most 2
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


#: modules whose tests train real models for many seconds each; `make test-fast` (pytest -m "not slow")
#: leaves them out for the inner loop, `make test` (CI) runs everything
SLOW_MODULES = {"test_methods_train.py", "test_crash_safety.py", "test_pretrain_stages.py", "test_distributed.py",
                "test_distributed_behaviours.py", "test_quickstart.py", "test_cli_recipes.py", "test_sftn.py",
                "test_ddnn_recipe.py", "test_netgraft.py", "test_few_shot_runs.py", "test_teacher_cache.py",
                "test_vit.py", "test_timm_models.py", "test_tune.py", "test_trackers.py", "test_int8.py",
                "test_teacher_store.py", "test_qat.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_head():
    """`digits_head(n_train, n_test)`: the first images of the digits train and test splits (loaded once)."""
    from kdforge.data import load_dataset

    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    return lambda n_train, n_test: (train.subset(torch.arange(n_train)), test.subset(torch.arange(n_test)))


@pytest.fixture(scope="session")
def tapped_outputs():
    """`tapped_outputs(method, student, teacher, images)`: the StepOutputs of one forward of both models,
    with the bound method's layers tapped (gradients on; nothing detached)."""
    from kdforge.features import FeatureTaps
    from kdforge.methods import StepOutputs

    def run(method, student, teacher, images):
        with FeatureTaps(student, method.student_layers) as ts, FeatureTaps(teacher, method.teacher_layers) as tt:
            s_logits, s_features = ts(images)
            t_logits, t_features = tt(images)
        return StepOutputs(images=images, labels=None, student_logits=s_logits, teacher_logits=t_logits,
                           student_features=dict(s_features), teacher_features=dict(t_features))

    return run


@pytest.fixture(scope="session")
def briefly_trained():
    """`briefly_trained(model, data, seed, steps)`: the state dict of a zoo model trained `steps` CE steps (SGD,
    lr 0.1, batches of 32 cycling over the first 96 images of `data`), so its outputs differ clearly per image."""
    from kdforge.config import config_from_dict
    from kdforge.engine.run import build_zoo_model

    def train(model: str, data, seed: int, steps: int) -> dict:
        torch.manual_seed(seed)
        net = build_zoo_model(config_from_dict({"student": {"model": model}}).student, 10, 1, "teacher")
        mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
        images, labels = (data.images.float() / 255 - mean) / std, data.labels
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        for step in range(steps):
            batch = torch.arange(32) + 32 * (step % 3)
            loss = torch.nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return net.state_dict()

    return train
