"""The training engine: one loop for every method (see `trainer.py`)."""

from kdforge.engine.checkpoint import load_checkpoint, load_model
from kdforge.engine.evaluate import evaluate
from kdforge.engine.run import build_zoo_model, load_datasets, load_run_data, train_from_config
from kdforge.engine.trainer import NonFiniteLossError, Trainer

__all__ = ["Trainer", "NonFiniteLossError", "evaluate", "load_checkpoint", "load_model",
           "build_zoo_model", "load_datasets", "load_run_data", "train_from_config"]
