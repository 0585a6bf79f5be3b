import os

import pytest
import torch

os.environ.setdefault("KDFORGE_TEST", "1")
# one thread per pytest-xdist worker (`make test` runs one worker per core), else at most 2
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_head():
    """`digits_head(n_train, n_test)`: the first images of the digits train and test splits (loaded once)."""
    from kdforge.data import load_dataset

    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    return lambda n_train, n_test: (train.subset(torch.arange(n_train)), test.subset(torch.arange(n_test)))
