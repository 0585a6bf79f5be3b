"""Data layer: whole datasets as uint8 tensors in memory, batched augmentation, a device-side loader."""

from .augment import Augment, normalize, random_crop, random_hflip
from .errors import DataError, UnknownDatasetError
from .few_shot import LabelFreeImageTensorDataset, few_shot_dataset, few_shot_indices
from .loader import TensorLoader
from .registry import dataset_names, load_dataset, register_dataset
from .tensor_dataset import ImageTensorDataset

__all__ = [
    "ImageTensorDataset",
    "LabelFreeImageTensorDataset",
    "few_shot_dataset",
    "few_shot_indices",
    "load_dataset",
    "dataset_names",
    "register_dataset",
    "DataError",
    "UnknownDatasetError",
    "Augment",
    "TensorLoader",
    "normalize",
    "random_crop",
    "random_hflip",
]
