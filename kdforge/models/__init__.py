"""The model zoo: CIFAR networks of the distillation literature and ImageNet ResNets.

    model = build_model("resnet8x4", num_classes=100)

Every model's `forward(x)` returns logits and the instance carries `stage_names`,
`block_names`, `classifier_name` and `input_size` (see `zoo_base.ZooModel`).
"""

from kdforge.models.registry import (
    ModelInfo,
    UnknownModelError,
    build_model,
    model_info,
    model_names,
    register_model,
)

# Importing the family modules registers their models.
from kdforge.models import (  # noqa: E402,F401  isort: skip
    dynamic,
    mobilenetv2,
    resnet_cifar,
    resnet_imagenet,
    shufflenetv1,
    shufflenetv2,
    simkd,
    vgg,
    vgg_nobn,
    wrn,
)
from kdforge.graft import adapted, grafted  # noqa: E402,F401  (NetGraft's composites, kept with NetGraft)
from kdforge.models.complexity import count_macs, count_parameters  # noqa: E402

__all__ = [
    "ModelInfo",
    "UnknownModelError",
    "build_model",
    "count_macs",
    "count_parameters",
    "model_info",
    "model_names",
    "register_model",
]
