"""insert_qdq: turn observe markers into quantize/dequantize pairs with the calibrated
parameters, and fake-quantize the weights of the ops that read them.

The result is the QDQ form that ONNX QDQ models import as: it runs in float as the simulation of
the int8 model (the "simulate" mode), and realize turns it into integer kernels."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import const, const_value, emit_as_is, is_const, observe_site, op_name, rewrite_main, tensor_shape
from ..ops import COMPUTE, channel_axes, moves_values
from .params import QParams, weight_qparams


def qdq(x, qp: QParams):
    """dequantize(quantize(x)) for per-tensor parameters."""
    scale, zp = const(qp.scale, "float32"), const(qp.zero_point, "int32")
    return R.dequantize(R.quantize(x, scale, zp, axis=-1, out_dtype=qp.dtype), scale, zp, axis=-1,
                        out_dtype="float32")


def weight_axis(op: str, weight: np.ndarray, per_channel: bool, attrs=None) -> int | None:
    """The axis a weight's scales run along (its output channels), None per tensor."""
    if not per_channel:
        return None
    return channel_axes(op, attrs)[0] % weight.ndim


def fake_quantize_weight(op: str, weight: np.ndarray, per_channel: bool, bits: int = 8, attrs=None) -> np.ndarray:
    qp = weight_qparams(weight, weight_axis(op, weight, per_channel, attrs), bits)
    return qp.dequantize(qp.quantize(weight))


def dequantized_weight(op: str, weight: np.ndarray, per_channel: bool, bits: int, attrs=None) -> relax.Expr:
    """dequantize(codes) of a `bits`-bit weight, the form QDQ models import as: realize keeps the
    codes themselves (4-bit values in int8), where re-quantizing the float weight at 8 bits would not."""
    qp = weight_qparams(weight, weight_axis(op, weight, per_channel, attrs), bits)
    axis = -1 if qp.axis is None else qp.axis
    return R.dequantize(relax.const(qp.quantize(weight)), const(qp.scale, "float32"), const(0, "int32"),
                        axis=axis, out_dtype="float32")


def output_shift(op: str, value, delta_w: np.ndarray, mean_input: np.ndarray) -> np.ndarray | None:
    """E[op(x, W_q)] - E[op(x, W)] = op(E[x], W_q - W), per output channel, shaped to add to the
    op's output; E[x] is the calibration data's mean input batch. None where it does not apply."""
    if op == "nn.conv2d" and mean_input.ndim == 4 and delta_w.ndim == 4:
        a = value.attrs
        # in NCHW / OIHW terms whatever the layouts (TFLite's are NHWC / HWIO, HWOI)
        mean_input = mean_input.transpose([str(a.data_layout).index(c) for c in "NCHW"])
        delta_w = delta_w.transpose([str(a.kernel_layout).index(c) for c in "OIHW"])
        groups = int(a.groups)
        channel_mean = mean_input.mean(axis=(0, 2, 3)).reshape(groups, -1)  # (groups, I / groups)
        out_channels = delta_w.shape[0]
        group_of = np.arange(out_channels) // (out_channels // groups)
        shift = (delta_w.sum(axis=(2, 3)) * channel_mean[group_of]).sum(axis=1)
        shape = [1, 1, 1, 1]
        shape[channel_axes(op, a)[1]] = -1
        return shift.reshape(shape)
    if op == "matmul" and delta_w.ndim == 2:
        return mean_input.reshape(-1, mean_input.shape[-1]).mean(axis=0) @ delta_w
    return None


def insert_qdq(mod, qparams: dict[str, QParams], per_channel: bool = True, input_means: dict | None = None,
               weight_bits: dict[str, int] | None = None):
    """The InsertQDQ pass. With `input_means` (site -> mean calibration sample) it also corrects
    each layer's bias for the mean error its quantized weights cause (Nagel et al., 2019).
    `weight_bits`: compute bindings (by variable name) whose weights take fewer than 8 bits."""
    return rewrite_main(mod, qdq_rule(qparams, per_channel, input_means, weight_bits))


def qdq_rule(qparams: dict[str, QParams], per_channel: bool = True, input_means: dict | None = None,
             weight_bits: dict[str, int] | None = None, switches=None):
    """insert_qdq's rewrite rule (for rewrite_main). `switches` (layer_errors.Switches) turns each
    quantize/dequantize pair, quantized weight and bias correction into a blend of the float and
    the quantized value by a scalar input, so one module runs any subset of them quantized."""
    quantized: set = set()
    mean_of: dict = {}  # var -> its mean calibration sample, where known

    def rule(bb, var, value):
        site = observe_site(value)
        if site is not None:
            x, fake = value.args[1], qdq(value.args[1], qparams[site])
            out = bb.emit(fake if switches is None else switches.activation(site, x, fake), f"{var.name}_qdq")
            quantized.add(out)
            if (input_means or {}).get(site) is not None:
                mean_of[out] = input_means[site]
            return out
        op = op_name(value)
        if moves_values(op, getattr(value, "attrs", None)) and value.args[0] in quantized:  # realize keeps these 8-bit
            out = bb.emit(value, str(var.name))
            quantized.add(out)
            if op in ("reshape", "flatten") and value.args[0] in mean_of:
                mean_of[out] = mean_of[value.args[0]].reshape(tensor_shape(out))
            elif op == "nn.pad" and value.args[0] in mean_of:
                widths = [int(w) for w in value.attrs.pad_width]
                mean_of[out] = np.pad(mean_of[value.args[0]], list(zip(widths[0::2], widths[1::2])))
            return out
        if op in COMPUTE and value.args[0] in quantized and is_const(value.args[1]):
            w = const_value(value.args[1])
            if w.dtype.kind == "f":
                bits = (weight_bits or {}).get(str(var.name), 8)
                wq = fake_quantize_weight(op, w, per_channel, bits, value.attrs)
                w_expr = relax.const(wq) if bits == 8 else bb.emit(dequantized_weight(op, w, per_channel, bits, value.attrs),
                                                                     f"{var.name}_weight")
                if switches is not None:
                    w_expr = bb.emit(switches.weight(str(var.name), relax.const(w), w_expr), f"{var.name}_switched")
                args = [value.args[0], w_expr, *value.args[2:]]
                value = relax.Call(value.op, args, value.attrs, value.ty_args)
                mean = mean_of.get(value.args[0])
                shift = output_shift(op, value, wq.astype(np.float64) - w, mean) if mean is not None else None
                if shift is not None:
                    out = bb.emit(value, str(var.name))
                    correction = relax.const(shift.astype("float32"))
                    if switches is not None:
                        correction = switches.correction(str(var.name), correction)
                    return bb.emit(R.subtract(out, correction), f"{var.name}_corrected")
        return emit_as_is(bb, var, value)

    return rule
