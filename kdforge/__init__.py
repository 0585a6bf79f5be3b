"""kdforge: knowledge distillation for image classifiers on one fast engine.

    from kdforge import build_model, load_dataset, load_model, Losses, Trainer, config_from_dict
"""

__version__ = "0.1.0"

from kdforge.config import RunConfig, config_from_dict, load_config
from kdforge.data import Augment, ImageTensorDataset, TensorLoader, load_dataset
from kdforge.engine import Trainer, evaluate, load_checkpoint, load_model, train_from_config
from kdforge.features import FeatureTaps
from kdforge.methods import Losses, Method, StepOutputs, build_method, register_method
from kdforge.models import build_model, model_names

from kdforge.renamed import install as _install_moved_modules, renamed_attribute as _renamed

_install_moved_modules()


def __getattr__(name: str):  # old public names (kdforge/renamed.py), with a DeprecationWarning
    return _renamed(__name__, name)


__all__ = [
    "RunConfig", "config_from_dict", "load_config", "Augment", "ImageTensorDataset", "TensorLoader",
    "load_dataset", "Trainer", "evaluate", "load_checkpoint", "load_model", "train_from_config",
    "FeatureTaps", "Losses", "Method", "StepOutputs", "build_method", "register_method",
    "build_model", "model_names",
]
