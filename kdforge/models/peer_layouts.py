"""The parameter names of published CIFAR teachers, renamed to the zoo's.

RepDistiller (Tian et al., "Contrastive Representation Distillation", ICLR 2020,
github.com/HobbitLong/RepDistiller) publishes the CIFAR-100 teachers most KD papers start from,
``<model>_vanilla/ckpt_epoch_240.pth`` = {model, epoch, accuracy, optimizer}; mdistiller (Zhao et al.,
"Decoupled Knowledge Distillation", CVPR 2022, github.com/megvii-research/mdistiller) ships the same
files, and its CIFAR models keep RepDistiller's names. Their architectures are the zoo's (checked against
the published definitions; exact logits in tests/test_published_teachers.py); only the names differ:

* resnet8 .. resnet110, resnet8x4, resnet32x4: none (the zoo's names);
* ResNet50 (resnetv2.py) -> resnet50: ``*.shortcut.{0,1}`` -> ``*.downsample.{0,1}``, ``linear`` -> ``fc``;
* ShuffleV1, ShuffleV2 -> shufflenetv1/v2: ``linear`` -> ``fc``;
* wrn_d_k: ``blockN.layer.i`` -> ``layerN.i``, ``convShortcut`` -> ``shortcut``;
* vggN (their vggN_bn): ``blockK.{3u,3u+1}`` -> ``layer{K+1}.u.{conv,bn}``, ``classifier`` -> ``fc``;
* MobileNetV2 (mobile_half) -> mobilenetv2: ``conv1.{0,1}`` -> ``conv1``/``bn1``, ``conv2.{0,1}`` ->
  ``conv2``/``bn2``, ``blocks.i.j.conv.{0,1,3,4,6,7}`` -> ``layer{i+1}.j.{conv1,bn1,conv2,bn2,conv3,bn3}``,
  ``classifier.0`` -> ``fc``.

A layout is recognised by its keys (`Layout.matches`); `engine/weights_file.fit_to_model` keeps the
first candidate that places every key of a file in the model with its shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

Rule = tuple[str, str | Callable[[re.Match], str]]


@dataclass(frozen=True)
class Layout:
    """`name`, the key patterns all of which some key must match (`signature`), and the renaming `rules`
    (regex, replacement), applied in turn to every key."""

    name: str
    signature: tuple[str, ...]
    rules: tuple[Rule, ...]

    def matches(self, keys: Iterable[str]) -> bool:
        keys = list(keys)
        return all(any(re.search(pattern, k) for k in keys) for pattern in self.signature)

    def rename(self, key: str) -> str:
        for pattern, replacement in self.rules:
            key = re.sub(pattern, replacement, key)
        return key


def _vgg_unit(m: re.Match) -> str:
    """``blockK.i.`` of a ``[conv, bn, relu]*`` Sequential -> ``layer{K+1}.{i // 3}.conv|bn.``."""
    unit, part = divmod(int(m[2]), 3)
    return f"layer{int(m[1]) + 1}.{unit}.{('conv', 'bn', 'relu')[part]}."


_MBV2_PARTS = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def _mbv2_unit(m: re.Match) -> str:
    """``blocks.i.j.conv.n.`` (pw, BN, ReLU, dw, BN, ReLU, pw-linear, BN) -> ``layer{i+1}.j.<part>.``."""
    return f"layer{int(m[1]) + 1}.{m[2]}.{_MBV2_PARTS.get(m[3], 'relu' + m[3])}."


#: as saved: torchvision's ResNets (`resnet*_imagenet`) and RepDistiller's CIFAR ResNets use the zoo's names
AS_SAVED = Layout("as saved", (), ())

LAYOUTS = (
    Layout("RepDistiller/mdistiller ResNet50", (r"^linear\.weight$", r"\.shortcut\.0\.weight$"),
           ((r"\.shortcut\.(\d)\.", r".downsample.\1."), (r"^linear\.", "fc."))),
    Layout("RepDistiller/mdistiller ShuffleNet", (r"^linear\.weight$",), ((r"^linear\.", "fc."),)),
    Layout("RepDistiller/mdistiller WRN", (r"^block\d\.layer\.\d+\.",),
           ((r"^block(\d)\.layer\.", r"layer\1."), (r"\.convShortcut\.", ".shortcut."))),
    Layout("RepDistiller/mdistiller VGG", (r"^block\d\.\d+\.", r"^classifier\.weight$"),
           ((r"^block(\d)\.(\d+)\.", _vgg_unit), (r"^classifier\.", "fc."))),
    Layout("RepDistiller/mdistiller MobileNetV2", (r"^blocks\.\d+\.\d+\.conv\.\d+\.",),
           ((r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."), (r"^conv2\.0\.", "conv2."),
            (r"^conv2\.1\.", "bn2."), (r"^blocks\.(\d+)\.(\d+)\.conv\.(\d+)\.", _mbv2_unit),
            (r"^classifier\.0\.", "fc."))),
)


def candidates(keys: Iterable[str]) -> list[Layout]:
    """The layouts to try on a file with these keys: as saved, then every peer layout its keys match."""
    keys = list(keys)
    return [AS_SAVED, *(layout for layout in LAYOUTS if layout.matches(keys))]
