"""The int8 model of a quantisation-aware-trained student as an ONNX file with QuantizeLinear/DequantizeLinear nodes.

torch's ONNX exporters do not take torch.ao's quantised models, so this writes the QDQ graph itself from the
converted model (`engine/quantize.convert`): each int8 tensor of the PyTorch model becomes a float value passed
through QuantizeLinear -> DequantizeLinear with the model's own scale and zero point; convolutions and linear layers
read their int8 weights (per output channel) through DequantizeLinear, their bias as int32 at scale
input_scale x weight_scale (how the int8 kernels add it), and end in the output's QuantizeLinear. ONNX Runtime
fuses these patterns into its int8 kernels (QLinearConv, ...). The ops written are those kdforge's zoo students
quantise to: quantize_per_tensor, Conv2d (+ReLU), Linear, BatchNorm2d (+ReLU), add (+ReLU), ReLU/ReLU6, max
and average pooling, global average pooling, flatten, identity, dequantize; any other op (one without an int8 kernel, left in float by the converter)
is a ConfigError naming its module and the op.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdforge.errors import ConfigError

__all__ = ["check_int8_graph", "write_qat_onnx"]

OPSET = 17


@dataclass
class _Q:
    """An int8 tensor of the model: its dequantised ONNX value, scale, zero point, element type."""

    name: str
    scale: float
    zero_point: int
    dtype: torch.dtype


def _where(node, model) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(model.get_submodule(node.target)).__name__})"
    stack = list((node.meta.get("nn_module_stack") or {}).keys())
    op = getattr(node.target, "__name__", str(node.target))
    return f"{stack[-1] if stack else 'the model'} ({op})"


class _Writer:
    def __init__(self, model: torch.fx.GraphModule):
        self.model = model
        self.nodes, self.inits = [], []
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, array) -> str:
        from onnx import numpy_helper

        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, kind: str, inputs: list[str], hint: str, **attrs) -> str:
        from onnx import helper

        out = self.fresh(hint)
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def qdq(self, value: str, scale: float, zero_point: int, dtype: torch.dtype, hint: str) -> _Q:
        """`value` (float) through QuantizeLinear and DequantizeLinear with these parameters."""
        import numpy as np

        zp_type = np.uint8 if dtype == torch.quint8 else np.int8
        s = self.const(f"{hint}_scale", np.array(scale, dtype=np.float32))
        z = self.const(f"{hint}_zero_point", np.array(zero_point, dtype=zp_type))
        q = self.op("QuantizeLinear", [value, s, z], f"{hint}_q")
        return _Q(self.op("DequantizeLinear", [q, s, z], f"{hint}_dq"), float(scale), int(zero_point), dtype)

    def weight(self, w: torch.Tensor, hint: str) -> tuple[str, torch.Tensor]:
        """An int8 weight (per channel or per tensor) as DequantizeLinear of its int8 values; returns
        (its float value, its scale per output channel)."""
        import numpy as np

        values = w.int_repr().numpy().astype(np.int8)
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales = w.q_per_channel_scales().float()
            zps = w.q_per_channel_zero_points().numpy().astype(np.int8)
            axis = int(w.q_per_channel_axis())
        else:
            scales = torch.full((w.shape[0],), w.q_scale(), dtype=torch.float32)
            zps = np.full(w.shape[0], w.q_zero_point(), dtype=np.int8)
            axis = 0
        s = self.const(f"{hint}_w_scale", scales.numpy().astype(np.float32))
        z = self.const(f"{hint}_w_zero_point", zps)
        q = self.const(f"{hint}_w", values)
        return self.op("DequantizeLinear", [q, s, z], f"{hint}_w_dq", axis=axis), scales

    def bias(self, b: torch.Tensor | None, x: _Q, w_scales: torch.Tensor, hint: str) -> list[str]:
        """The bias as int32 at scale input_scale x weight_scale, dequantised (none: no input)."""
        import numpy as np

        if b is None:
            return []
        scale = (x.scale * w_scales).double()
        values = torch.round(b.detach().double() / scale).clamp(-2 ** 31, 2 ** 31 - 1).to(torch.int32)
        s = self.const(f"{hint}_b_scale", scale.float().numpy())
        z = self.const(f"{hint}_b_zero_point", np.zeros(len(values), dtype=np.int32))
        q = self.const(f"{hint}_b", values.numpy())
        return [self.op("DequantizeLinear", [q, s, z], f"{hint}_b_dq", axis=0)]


def _arg(value, model):
    """A node argument's Python value: a get_attr node's tensor as a number, else the value itself."""
    if isinstance(value, torch.fx.Node) and value.op == "get_attr":
        tensor = model
        for part in value.target.split("."):
            tensor = getattr(tensor, part)
        return tensor.item() if isinstance(tensor, torch.Tensor) else tensor
    return value


def _emit(model: torch.fx.GraphModule, w: _Writer | None) -> str | None:
    """Walk the converted graph; with a writer, write it (returns the output's name); without, only check."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    env: dict[str, object] = {}
    output = None
    for node in model.graph.nodes:
        where = _where(node, model)
        args = [env.get(a.name, a) if isinstance(a, torch.fx.Node) else a for a in node.args]
        hint = node.name
        ok = True
        if node.op == "placeholder":
            env[node.name] = "images"
            continue
        if node.op == "get_attr":
            env[node.name] = _arg(node, model)
            continue
        if node.op == "output":
            output = args[0]
            ok = isinstance(output, str)
        elif node.op == "call_function" and node.target is torch.quantize_per_tensor:
            ok = isinstance(args[0], str)
            if ok and w:
                env[node.name] = w.qdq(args[0], float(args[1]), int(args[2]), args[3], hint)
        elif node.op == "call_method" and node.target == "dequantize":
            ok = isinstance(args[0], _Q)
            env[node.name] = args[0].name if ok else None
        elif node.op == "call_module":
            module = model.get_submodule(node.target)
            x = args[0]
            ok = isinstance(x, _Q)
            if not ok:
                pass
            elif isinstance(module, (nnq.Conv2d, nniq.ConvReLU2d)) and module.padding_mode == "zeros":
                if w:
                    weight, scales = w.weight(module.weight(), hint)
                    pads = list(module.padding) * 2
                    y = w.op("Conv", [x.name, weight, *w.bias(module.bias(), x, scales, hint)], hint,
                             strides=list(module.stride), pads=pads, dilations=list(module.dilation),
                             group=module.groups)
                    if isinstance(module, nniq.ConvReLU2d):
                        y = w.op("Relu", [y], f"{hint}_relu")
                    env[node.name] = w.qdq(y, module.scale, module.zero_point, x.dtype, hint)
            elif isinstance(module, (nnq.Linear, nniq.LinearReLU)):
                if w:
                    weight, scales = w.weight(module.weight(), hint)
                    y = w.op("Gemm", [x.name, weight, *w.bias(module.bias(), x, scales, hint)], hint, transB=1)
                    if isinstance(module, nniq.LinearReLU):
                        y = w.op("Relu", [y], f"{hint}_relu")
                    env[node.name] = w.qdq(y, module.scale, module.zero_point, x.dtype, hint)
            elif isinstance(module, (nnq.BatchNorm2d, nniq.BNReLU2d)):  # a pre-activation block's BN (+ReLU)
                if w:
                    import numpy as np

                    consts = [w.const(f"{hint}_{k}", getattr(module, k).detach().float().numpy().astype(np.float32))
                              for k in ("weight", "bias", "running_mean", "running_var")]
                    y = w.op("BatchNormalization", [x.name, *consts], hint, epsilon=float(module.eps))
                    if isinstance(module, nniq.BNReLU2d):
                        y = w.op("Relu", [y], f"{hint}_relu")
                    env[node.name] = w.qdq(y, module.scale, module.zero_point, x.dtype, hint)
            elif isinstance(module, nn.AvgPool2d) and module.divisor_override is None:
                if w:
                    pair = (lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v])
                    y = w.op("AveragePool", [x.name], hint, kernel_shape=pair(module.kernel_size),
                             strides=pair(module.stride), pads=pair(module.padding) * 2,
                             ceil_mode=int(module.ceil_mode), count_include_pad=int(module.count_include_pad))
                    env[node.name] = w.qdq(y, x.scale, x.zero_point, x.dtype, hint)
            elif isinstance(module, nn.Identity):
                env[node.name] = x
            elif isinstance(module, (nn.ReLU, nn.ReLU6, nn.MaxPool2d)) or (
                    isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))):
                if w:
                    if isinstance(module, nn.MaxPool2d):
                        k, s, p = (module.kernel_size, module.stride, module.padding)
                        pair = (lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v])
                        y = w.op("MaxPool", [x.name], hint, kernel_shape=pair(k), strides=pair(s),
                                 pads=pair(p) * 2)
                    elif isinstance(module, nn.AdaptiveAvgPool2d):
                        y = w.op("GlobalAveragePool", [x.name], hint)
                    elif isinstance(module, nn.ReLU6):
                        import numpy as np

                        y = w.op("Clip", [x.name, w.const("zero", np.array(0, np.float32)),
                                          w.const("six", np.array(6, np.float32))], hint)
                    else:
                        y = w.op("Relu", [x.name], hint)
                    env[node.name] = w.qdq(y, x.scale, x.zero_point, x.dtype, hint)
            else:
                ok = False
        elif node.op == "call_function" and str(node.target) in ("quantized.add", "quantized.add_relu"):
            a, b = args[0], args[1]
            ok = isinstance(a, _Q) and isinstance(b, _Q)
            if ok and w:
                y = w.op("Add", [a.name, b.name], hint)
                if str(node.target) == "quantized.add_relu":
                    y = w.op("Relu", [y], f"{hint}_relu")
                env[node.name] = w.qdq(y, float(args[2]), int(args[3]), a.dtype, hint)
        elif (node.op == "call_function" and node.target is torch.flatten) or (
                node.op == "call_method" and node.target == "flatten"):
            x = args[0]
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            ok = isinstance(x, _Q) and start == 1 and (len(args) < 3 or args[2] == -1)
            if ok and w:
                env[node.name] = w.qdq(w.op("Flatten", [x.name], hint, axis=1), x.scale, x.zero_point, x.dtype,
                                       hint)
        else:
            ok = False
        if not ok:
            raise ConfigError(f"int8: {where} has no int8 op kdforge can export (its input is "
                              f"{'float' if not any(isinstance(a, _Q) for a in args) else 'int8'}); quantise a "
                              f"model whose ops all have int8 kernels, or export it in float")
        if not w and node.name not in env:
            env[node.name] = _Q(node.name, 1.0, 0, torch.quint8)  # a stand-in: only the kinds are checked
    return output


def check_int8_graph(converted: torch.fx.GraphModule) -> None:
    """ConfigError naming the first op of the converted model that the int8 export cannot write."""
    _emit(converted, None)


def write_qat_onnx(converted: torch.fx.GraphModule, in_channels: int, image_size: int, path: str | Path) -> None:
    """The converted int8 model as a QDQ ONNX file: input `images` (N, C, H, W) float, output `logits`."""
    import onnx
    from onnx import TensorProto, helper

    w = _Writer(converted)
    out = _emit(converted, w)
    w.nodes.append(helper.make_node("Identity", [out], ["logits"], name="logits"))
    graph = helper.make_graph(
        w.nodes, "kdforge_int8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", in_channels, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", None])], initializer=w.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kdforge")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
