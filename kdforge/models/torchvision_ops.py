"""Import timm where pip paired a torchvision built for CUDA torch with the CPU torch.

timm imports torchvision. Its PyPI build is made for CUDA torch; with the CPU torch its compiled ops do not load,
and `import torchvision` fails while registering a fake kernel for `torchvision::nms` ("operator
torchvision::nms does not exist"). Defining the schemas of the two ops it registers kernels for lets it import;
classification models, all kdforge builds with timm, never call them (detection models would fail on them).
"""

from __future__ import annotations

import importlib.util
import sys

import torch

_LIBRARY: list = []  # the torch.library.Library defining the schemas, kept alive


def allow_torchvision_without_its_ops() -> bool:
    """Make `import torchvision` (and so timm) work where its compiled ops do not load; True if the schemas had
    to be defined. Nothing happens where torchvision is absent or imports by itself."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return False
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import's half-loaded modules
    if not _LIBRARY:
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
        _LIBRARY.append(library)
    return True
