"""Default tap points of a zoo model, and pairing of teacher and student layers.

Every zoo model names its `stage_names`, `block_names` and `classifier_name`; custom
models can set the same attributes or methods can be given layers explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kdforge.errors import LayerError
from kdforge.features import expand_patterns

#: what a method can ask for by default
KINDS = ("stages", "stages_preact", "blocks", "attention", "embedding", "logits")

#: a ResNet with more blocks than this taps every second block for AFD (the official code's ResNet-110 rule)
AFD_MAX_BLOCKS = 27


def _attribute(model: nn.Module, name: str):
    value = getattr(model, name, None)
    if not value:
        raise LayerError(
            f"{type(model).__name__} has no `{name}`: give the method's layers by module name "
            f"(`kdforge layers` lists them), or set model.{name}"
        )
    return value


def stage_ends(model: nn.Module) -> list[str]:
    """Outputs of each resolution stage (post-activation)."""
    return list(_attribute(model, "stage_names"))


def stage_ends_preact(model: nn.Module) -> list[str]:
    """Pre-activation output of each stage: the input of the stage's last `out_relu` module. A token model's
    stage ends are themselves pre-activation (a transformer block ends with its residual sum, no ReLU)."""
    if getattr(model, "token_layout", None) is not None:
        return stage_ends(model)
    names = [n for n, _ in model.named_modules()]
    taps = []
    for stage in stage_ends(model):
        inside = [n for n in names if n.startswith(stage + ".") and n.endswith(".out_relu")]
        if not inside:
            raise LayerError(f"{type(model).__name__}: stage '{stage}' has no `out_relu` module to tap its "
                             f"pre-activation output; give the layers by name")
        taps.append(inside[-1] + ":input")
    return taps


def block_outputs(model: nn.Module) -> list[str]:
    """Every block's output (post-activation), in forward order."""
    return list(_attribute(model, "block_names"))


def attention_taps(model: nn.Module) -> list[str]:
    """AFD's and RTK's candidate layers, per family, as in the official AFD code
    (Ji, Heo & Park, AAAI 2021; github.com/clovaai/attention-feature-distillation, `LAYER` in utils.py):

    * pre-activation WRN (`WideResNet`): the BN-ReLU'd features, not the raw residual sums: the
      ``relu1`` output (relu(bn1(x))) of every block but the first (so each block's output after the
      BN-ReLU that follows it), then the final ``relu`` (relu(bn1(out))); WRN-40-2 18, WRN-16-2 6;
    * `ResNet`: every block output (post-ReLU), as the official code for resnet20/56 and ResNet-18/34;
      with more than `AFD_MAX_BLOCKS` blocks, every second block ending with the last, as the official
      code for ResNet-110 (27 of its 54 blocks). Applying that rule by block count is our generalisation;
      of the zoo only resnet110 has so many blocks;
    * every other family (the official code has none of them; our choice): every block output.
    """
    from kdforge.models.resnet import ResNet
    from kdforge.models.wrn import WideResNet

    blocks = block_outputs(model)
    if isinstance(model, WideResNet):
        taps = [f"{b}.relu1" for b in blocks[1:]] + ["relu"]
        modules = dict(model.named_modules())
        missing = [t for t in taps if t not in modules]
        if missing:
            raise LayerError(f"{type(model).__name__} has no module {missing[0]!r} to tap its BN-ReLU'd "
                             f"features; give the layers by name")
        return taps
    if isinstance(model, ResNet) and len(blocks) > AFD_MAX_BLOCKS:
        return blocks[(len(blocks) - 1) % 2::2]
    return blocks


def embedding(model: nn.Module) -> list[str]:
    """The pooled feature vector: the classifier's input."""
    return [_attribute(model, "classifier_name") + ":input"]


def default_layers(model: nn.Module, kind: str) -> list[str]:
    if kind == "stages":
        return stage_ends(model)
    if kind == "stages_preact":
        return stage_ends_preact(model)
    if kind == "blocks":
        return block_outputs(model)
    if kind == "attention":
        return attention_taps(model)
    if kind == "embedding":
        return embedding(model)
    if kind == "logits":
        return []
    raise ValueError(f"unknown layer kind {kind!r}; one of {KINDS}")


def resolve_layers(model: nn.Module, given: Sequence[str] | None, kind: str) -> list[str]:
    """`given` names (globs expanded) or the model's defaults of `kind`."""
    if given:
        return expand_patterns(model, given)
    return default_layers(model, kind)


def last_layer(names: list[str]) -> list[str]:
    """The deepest of a list of default layers."""
    return names[-1:]


def pair_from_end(teacher_layers: Sequence[str], student_layers: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pair two stage lists of different lengths by their last entries (deepest with deepest)."""
    k = min(len(teacher_layers), len(student_layers))
    return list(teacher_layers[len(teacher_layers) - k:]), list(student_layers[len(student_layers) - k:])


def shape_error(method: str, t_name: str, t: torch.Tensor, s_name: str, s: torch.Tensor, why: str) -> LayerError:
    """The error for a teacher/student layer pair that a method cannot bridge."""
    return LayerError(
        f"{method}: teacher layer '{t_name}' {tuple(t.shape[1:])} and student layer '{s_name}' "
        f"{tuple(s.shape[1:])} cannot be matched: {why}"
    )
