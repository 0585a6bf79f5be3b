"""Quantisation-aware training of the student (`train.quantize: {mode: qat, start_epoch, backend}`).

PyTorch's own FX graph-mode quantisation (`torch.ao.quantization.quantize_fx`, what the pinned torch ships; the
PT2E flow lives in torchao): `prepare_qat_fx` with the backend's default QAT settings traces the student, folds
each BatchNorm into the convolution before it (`ConvBn2d`, which keeps training the BN statistics), and puts
fake quantisation on the weights (int8, per output channel) and on the activations (uint8 after each op). The
parameters stay the same tensors, so the optimizer and its momentum carry on across the switch.

A traced student no longer calls its container modules (`layer1`, a residual block), so the methods' student taps
are re-made as *tap points*: an identity module inserted in the traced graph after the node that ends the tapped
module (after its output's fake quantisation, the value the next layer reads), or before the first node that
reads its input; `FeatureTaps` finds them through `model.kdforge_tap_points` (tap -> module name). They hold no
state, so a checkpoint's state dict is the prepared model's.

`convert` gives the int8 model (`convert_fx`), whose ops `int8_problems` checks against what the int8 export
(`deploy/qat_onnx.py`) writes: an op left in float (one without an int8 kernel) is named with its module.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from kdforge.errors import ConfigError

__all__ = ["TapPoint", "convert", "example_images", "like_checkpoint", "prepare_qat", "quantize_record",
           "set_observers", "with_tap_points"]


class TapPoint(nn.Identity):
    """Where a tapped module's output (or input) is in a traced, quantisation-prepared student."""


def example_images(in_channels: int, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A batch of two blank images, what `prepare_qat` traces the student with."""
    return torch.zeros(2, in_channels, image_size, image_size, device=device)


def _qat_mapping(backend: str):
    import torch.ao.quantization as tq

    return tq.get_default_qat_qconfig_mapping(backend)


def prepare_qat(model: nn.Module, backend: str, example: torch.Tensor) -> torch.fx.GraphModule:
    """The student prepared for QAT (train mode); a model FX cannot trace is one ConfigError naming where."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    record = getattr(model, "zoo_record", None)
    name = (record or {}).get("name") or type(model).__name__
    was_training = model.training
    model.train()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices, once per switch
            prepared = prepare_qat_fx(model, _qat_mapping(backend), (example,))
    except Exception as exc:  # torch.fx's TraceError and the quantizer's own errors
        detail = " ".join(str(exc).split())[:300]
        raise ConfigError(f"train.quantize: the student {name} cannot be prepared for quantisation-aware training "
                          f"({type(exc).__name__}: {detail})") from None
    prepared.train(was_training)
    if record is not None:
        prepared.zoo_record = record
    prepared.kdforge_quantize = {"mode": "qat", "backend": backend}
    return prepared


def quantize_record(model: nn.Module) -> dict[str, Any] | None:
    """{mode, backend} of a QAT-prepared student (saved in its checkpoints), None for a float one."""
    return getattr(model, "kdforge_quantize", None)


def set_observers(model: nn.Module, on: bool) -> None:
    """Let the fake quantisers' observers update their ranges (training) or keep them (evaluation, saving)."""
    import torch.ao.quantization as tq

    model.apply(tq.enable_observer if on else tq.disable_observer)


def _stack(node) -> list[str]:
    return list((node.meta.get("nn_module_stack") or {}).keys())


def with_tap_points(model: torch.fx.GraphModule, taps: list[str]) -> torch.fx.GraphModule:
    """Insert a `TapPoint` for each tap (a module name, `:input` for its input) into the prepared graph, in place;
    a tap no node of the graph belongs to is a ConfigError naming it."""
    from kdforge.features import Tap

    graph = model.graph
    nodes = list(graph.nodes)
    points: dict[str, str] = {}
    for i, text in enumerate(dict.fromkeys(taps)):
        tap = Tap.parse(text)
        inside = [n for n in nodes if tap.module in _stack(n)]
        if not inside:
            raise ConfigError(f"train.quantize: no op of the traced student belongs to '{tap.module}', so tap "
                              f"'{text}' cannot be taken after quantisation")
        if tap.what == "output":
            value = inside[-1]
            users = list(value.users)
            if len(users) == 1 and users[0].op == "call_module" and "activation_post_process" in str(users[0].target):
                value = users[0]  # the fake-quantised output, as the next layer reads it
        else:
            first = inside[0]
            outside = [a for a in first.all_input_nodes if tap.module not in _stack(a)]
            if not outside:
                raise ConfigError(f"train.quantize: the input of '{tap.module}' is not a value of the traced graph")
            value = outside[0]
        name = f"kdforge_tap_{i}"
        model.add_submodule(name, TapPoint())
        with graph.inserting_after(value):
            point = graph.call_module(name, (value,))
        value.replace_all_uses_with(point, delete_user_cb=lambda user, point=point: user is not point)
        points[text] = name
    graph.lint()
    model.recompile()
    model.kdforge_tap_points = points
    return model


def without_tap_points(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the prepared model with its tap points taken out again (for conversion)."""
    model = copy.deepcopy(model)
    for node in list(model.graph.nodes):
        if node.op == "call_module" and isinstance(model.get_submodule(node.target), TapPoint):
            node.replace_all_uses_with(node.args[0])
            model.graph.erase_node(node)
    model.recompile()
    for name in list(getattr(model, "kdforge_tap_points", {}).values()):
        delattr(model, name)
    model.kdforge_tap_points = {}
    return model


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 model of a QAT-prepared student (eval mode, `convert_fx`), for its backend's kernels."""
    from torch.ao.quantization.quantize_fx import convert_fx

    backend = (quantize_record(prepared) or {}).get("backend", "x86")
    torch.backends.quantized.engine = backend
    model = without_tap_points(prepared).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert_fx(model)
    converted.kdforge_quantize = quantize_record(prepared)
    return converted


def like_checkpoint(model: nn.Module, ckpt: dict[str, Any]) -> nn.Module:
    """`model` (a fresh zoo model) prepared as the checkpoint's student was, when that student trained with
    `train.quantize` (its state dict fits the prepared graph); else `model` itself."""
    q = ckpt.get("quantize")
    if not q:
        return model
    data = ckpt.get("data") or {}
    return prepare_qat(model, q["backend"], example_images(data.get("in_channels") or 3, data.get("image_size") or 32))
