"""Op tables: which Relax ops are layers (compute with weights), which are elementwise (and how to
evaluate them for a lookup table), which only move data. The quantizer, the reports and the
schedules read these; nothing here imports the rest of qcompile."""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _clip(x, lo, hi):
    return np.clip(x, lo, hi)


# op -> numpy function of float64 arrays (scalar constants and PrimValue attributes passed as
# numbers). A chain of these over one 8-bit tensor becomes one 256-entry lookup table.
ELEMENTWISE = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "maximum": np.maximum, "minimum": np.minimum, "power": np.power,
    "clip": _clip, "nn.relu": lambda x: np.maximum(x, 0.0), "negative": np.negative, "abs": np.abs,
    "sigmoid": _sigmoid, "tanh": np.tanh, "exp": np.exp, "sqrt": np.sqrt,
    "rsqrt": lambda x: 1.0 / np.sqrt(x), "erf": _erf, "square": np.square,
    "nn.silu": lambda x: x * _sigmoid(x), "nn.gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "nn.gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "floor": np.floor, "ceil": np.ceil, "round": np.round,
}

# Elementwise ops that are a few vector instructions in float32 on every target (no libm call):
# a table of them alone is computed rather than looked up (quantize/realize.py).
ARITHMETIC = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "clip", "nn.relu", "negative", "abs"}

# Full Relax op name -> the layer kind reports and layer names use (every op with a weight operand).
LAYER_OPS = {
    "relax.nn.conv2d": "conv2d", "relax.nn.conv1d": "conv1d", "relax.matmul": "matmul",
    "relax.linear": "dense", "relax.nn.dense": "dense", "relax.nn.conv2d_transpose": "conv2d_transpose",
}

# The kernel (a call_tir) of an int4 block-wise weight-only matmul (quantize/blockwise.py): a layer
# like relax.matmul, with int4 codes and per-group scales as its constant operands.
INT4_MATMUL_KERNEL = "qcompile_int4_matmul"

# Ops that have no integer form here and stay float islands, with the reason reports give.
FLOAT_ONLY = {
    "nn.layer_norm": "no integer form: its mean and variance need a wider range than int8 gives, "
                     "kept fp32 between int8 layers",
    "nn.softmax": "no integer form: exp over the row's max-subtracted logits in fp32; its output is "
                  "quantized for the next matmul",
}

# Ops whose weight operand (index 1) is per-output-channel quantized along `weight_axis`;
# the int32 result's channel axis is `out_axis` (negative: from the end).
COMPUTE = {
    "nn.conv2d": {"weight_axis": 0, "out_axis": 1},
    "nn.conv1d": {"weight_axis": 0, "out_axis": 1},
    "matmul": {"weight_axis": -1, "out_axis": -1},
}

# Ops that follow a compute op and stay exact on its int32 accumulator.
EPILOGUE = {"add", "subtract", "nn.relu", "clip"}

# Binary ops between two activations with an integer form.
BINARY = {"add", "subtract", "multiply"}

# Ops that move or select 8-bit values without changing their scale.
PASSTHROUGH = {
    "reshape", "permute_dims", "flatten", "squeeze", "expand_dims", "strided_slice",
    "nn.max_pool2d", "nn.max_pool1d", "nn.adaptive_max_pool2d",
}


def moves_values(op: str | None, attrs=None) -> bool:
    """A PASSTHROUGH op, a nearest-neighbour resize, or a constant pad with zeros: an 8-bit tensor
    padded with its zero point's code stands for the same values padded with 0 (the residual channel
    padding of MobileNet- and BlazeFace-style blocks). Other pad values need not be codes of the
    input's scale."""
    if op == "nn.pad":
        return str(attrs.pad_mode) == "constant" and float(attrs.pad_value) == 0.0
    if op == "image.resize2d":  # nearest-neighbour upsampling (FPN/PAN necks) copies values
        return is_nearest_resize(attrs)
    return op in PASSTHROUGH


def is_nearest_resize(attrs) -> bool:
    """A resize that copies input values (crop-and-resize can also write an extrapolation value)."""
    return str(attrs.method) == "nearest_neighbor" and str(attrs.coordinate_transformation_mode) != "tf_crop_and_resize"


# Reductions whose int32 sum has an exact scale.
REDUCE = {"mean", "sum"}

CONCAT = {"concat"}

OP_KINDS = {"compute": set(COMPUTE), "binary": BINARY, "reduce": REDUCE, "concat": CONCAT,
            "elementwise": set(ELEMENTWISE)}


def channel_axes(op: str, attrs=None) -> tuple[int, int]:
    """(the weight's output-channel axis, the result's channel axis) of a compute op: a
    convolution's come from its layouts (TFLite imports NHWC data with HWIO kernels, HWOI for
    depthwise), the rest from COMPUTE."""
    if op in ("nn.conv2d", "nn.conv1d") and attrs is not None:
        out_layout = str(attrs.out_layout) or str(attrs.data_layout)
        return str(attrs.kernel_layout).index("O"), out_layout.index("C")
    return COMPUTE[op]["weight_axis"], COMPUTE[op]["out_axis"]


def short_name(op: str) -> str:
    return op.split(".")[-1]
