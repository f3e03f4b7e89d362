"""Relax pass for the CPU families with packed int8 kernels: convolutions in NHWC (channels last),
the layout those kernels compute in, so activations stay channels-last from one packed kernel to
the next instead of being transposed into and out of every layer.

TVM's ConvertLayout moves the layout through the elementwise epilogues, residual adds and pooling,
and transposes only where it must change (the model's input, the classifier's reshape). It has no
layout rule for R.clip and would transpose back around every one, so clips become
maximum/minimum first (the same kernel once fused). Nor has it one for R.take, which realized int8
activations (hardswish, sigmoid, GELU... as 256-entry tables) look their values up with: a lookup
is elementwise on its indices, so the transposes ConvertLayout puts around it are moved past it
and cancel (PP-LCNet int8 had 30 lookups and 60 transposes, a sixth of its kernel time)."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax import op as R

from ...ir import (
    const_value,
    emit_as_is,
    is_const,
    is_scalar_const,
    main_bindings,
    op_name,
    rewrite_main,
    substitute,
    tensor_dtype,
    tensor_shape,
    vars_in,
)
from ...passes.fold_constants import FoldConstantsWithNumpy, FoldRemainingConstants

DESIRED = {"relax.nn.conv2d": ["NHWC", "OHWI"]}
TO_NCHW = [0, 3, 1, 2]
# Ops that compute each output element from the same element of each input (with scalar or no
# parameters): they commute with any transpose of all their inputs.
ELEMENTWISE = {"where", "astype", "quantize", "dequantize", "greater", "greater_equal", "less", "less_equal", "equal",
               "not_equal", "add", "subtract", "multiply", "divide", "maximum", "minimum", "clip", "round", "floor",
               "ceil", "sigmoid", "tanh", "exp", "negative", "abs", "sqrt", "nn.relu", "right_shift"}
POOLS = {"nn.max_pool2d": R.nn.max_pool2d, "nn.avg_pool2d": R.nn.avg_pool2d}
COMMUTATIVE = ("add", "multiply", "maximum", "minimum")
# ConvertLayout's time grows faster than the square of a function's length (measured: 0.85 s for 2000
# bindings, 20 s for 8000), and an unrolled recurrent network after a CNN (ddddocr's LSTM: 6000
# bindings after its last convolution at 333) cost 15-18 s in each module a build compiles. Where more
# than this many bindings follow the last convolution, ConvertLayout sees the function only up to it,
# and sink_transposes carries the transposes left at the cut down the rest.
LONG_TAIL = 1000
KEEP_LAYOUT = ELEMENTWISE | {"take", "concat", "nn.max_pool2d", "nn.avg_pool2d", "nn.adaptive_avg_pool2d", "image.resize2d"}


def _before_convert_layout(bb, var, value):
    """Clips as maximum/minimum, and the tensor first in a commutative op with a constant (alpha * x
    of a PReLU): ConvertLayout takes a binary op's layout from its first input and would keep it NCHW."""
    if op_name(value) in COMMUTATIVE and is_const(value.args[0]) and not is_const(value.args[1]):
        return bb.emit(relax.Call(value.op, [value.args[1], value.args[0]], value.attrs), var.name)
    if op_name(value) != "clip":
        return emit_as_is(bb, var, value)
    x, lo, hi = value.args
    dtype = tensor_dtype(x)
    low = bb.emit(R.maximum(x, relax.const(lo.value, dtype)))
    return bb.emit(R.minimum(low, relax.const(hi.value, dtype)), var.name)


def _axes(call) -> list[int] | None:
    axes = call.attrs.axes
    return None if axes is None else [int(a) for a in axes]


def is_table_lookup(call) -> bool:
    """take(table, indices, axis=0) of a constant 1-D table: elementwise on `indices`."""
    table = call.args[0]
    return is_const(table) and const_value(table).ndim == 1 and int(call.attrs.axis) == 0


def _commuted_args(var, value, permuted: dict):
    """(the call's arguments with its transposed inputs replaced by their sources, the transpose)
    where the call commutes with that transpose: an elementwise op whose tensor inputs all have its
    output's shape and are transposed alike (other inputs scalars), or a table lookup."""
    if op_name(value) == "take":
        if not is_table_lookup(value) or value.args[1] not in permuted:
            return None
        x, axes = permuted[value.args[1]]
        return [value.args[0], x], axes
    if op_name(value) not in ELEMENTWISE:
        return None
    args, axes = [], None
    for a in value.args:
        if a in permuted and tensor_shape(a) == tensor_shape(var) and axes in (None, permuted[a][1]):
            a, axes = permuted[a]
        elif tensor_dtype(a) is not None and not is_scalar_const(a):
            return None
        args.append(a)
    return (args, axes) if axes is not None else None


def convert_layout(mod):
    """ConvertLayout(DESIRED) of `main`, on the part up to its last convolution (and its epilogue)
    where a tail of more than LONG_TAIL bindings follows it."""
    bindings = list(main_bindings(mod))
    convs = [i for i, (_, value) in enumerate(bindings) if op_name(value) == "nn.conv2d"]
    cut = convs[-1] + 1 if convs else 0
    # with the layers after it that keep a layout (its epilogue), so that it stays fused to them
    while cut < len(bindings) and op_name(bindings[cut][1]) in KEEP_LAYOUT:
        cut += 1
    if len(bindings) - cut <= LONG_TAIL or len(mod["main"].body.blocks) != 1:
        return relax.transform.ConvertLayout(DESIRED)(mod)
    return _head_converted(mod, bindings[:cut], bindings[cut:])


def _head_converted(mod, head, tail):
    """`main` with its first bindings (`head`) through ConvertLayout as a function of their own, whose
    outputs are the variables the rest reads (in their original layouts), and the rest as it was."""
    func = mod["main"]
    defined = {var for var, _ in head}
    read = {v for _, value in tail for v in vars_in(value)} | set(vars_in(func.body.body))
    boundary = [var for var, _ in head if var in read]
    bb = relax.BlockBuilder()
    with bb.function("main", list(func.params), attrs=dict(func.attrs) if func.attrs is not None else None):
        with bb.dataflow():
            for var, value in head:
                bb.emit_normalized(relax.VarBinding(var, value))
            out = bb.emit_output(relax.Tuple(boundary))
        bb.emit_func_output(out)
    part = mod.clone()
    part["main"] = bb.get()["main"]
    converted = relax.transform.ConvertLayout(DESIRED)(part)["main"]
    remap = dict(zip(converted.params, func.params))
    at_cut: dict = {}  # a boundary variable -> what stands for it after the converted head

    def start(bb, _params):
        for var, value in main_bindings(tvm.IRModule({"main": converted})):
            value = substitute(value, remap)
            if var.same_as(converted.body.body):  # the tuple of the boundary's variables
                fields = value.fields if isinstance(value, relax.Tuple) else \
                    [bb.emit(relax.TupleGetItem(emit_as_is(bb, var, value), i)) for i in range(len(boundary))]
                at_cut.update(zip(boundary, fields))
            else:
                remap[var] = emit_as_is(bb, var, value)
        return at_cut

    def rule(bb, var, value):
        return at_cut.get(var, var) if var in defined else emit_as_is(bb, var, value)

    return rewrite_main(mod, rule, start=start)


def sink_transposes(mod):
    """What ConvertLayout leaves behind for ops it has no layout rule for (where, take) or whose
    input it found in NCHW: transposes move past elementwise ops, 2-D pools and resizes, and
    concatenations of tensors transposed alike (a detector's upsample-and-concat neck), and two
    transposes in a row become one, or none where they cancel."""
    permuted: dict = {}  # var -> (x, axes) where var = permute_dims(x, axes)

    def transposed(bb, var, x, axes):
        out = bb.emit(R.permute_dims(x, axes), var.name)
        permuted[out] = (x, axes)
        return out

    def rule(bb, var, value):
        name = op_name(value)
        axes = _axes(value) if name == "permute_dims" else None
        if axes is not None:
            x = value.args[0]
            if x in permuted:
                x, inner = permuted[x]
                axes = [inner[a] for a in axes]
                if axes == list(range(len(axes))):
                    return x
            return transposed(bb, var, x, axes)
        if (commuted := _commuted_args(var, value, permuted)) is not None:
            args, axes = commuted
            return transposed(bb, var, bb.emit(relax.Call(value.op, args, value.attrs, value.ty_args)), axes)
        if name in POOLS and value.attrs.layout == "NCHW" and permuted.get(value.args[0], (None, None))[1] == TO_NCHW:
            a = value.attrs
            pooled = bb.emit(POOLS[name](permuted[value.args[0]][0], a.pool_size, a.strides, a.padding, a.dilation,
                                         a.ceil_mode, a.count_include_pad, layout="NHWC", out_layout="NHWC"))
            return transposed(bb, var, pooled, TO_NCHW)
        if name == "image.resize2d" and value.attrs.layout == "NCHW" and \
                permuted.get(value.args[0], (None, None))[1] == TO_NCHW:
            a = value.attrs
            resized = bb.emit(R.image.resize2d(permuted[value.args[0]][0], value.args[1], tuple(float(v) for v in a.roi), "NHWC", a.method,
                                               a.coordinate_transformation_mode, a.rounding_method, a.cubic_alpha,
                                               a.cubic_exclude, a.extrapolation_value, a.out_dtype))
            return transposed(bb, var, resized, TO_NCHW)
        if name == "concat" and isinstance(value.args[0], relax.Tuple):
            fields = value.args[0].fields
            sources = [permuted.get(f) for f in fields]
            if all(s is not None and s[1] == sources[0][1] for s in sources):
                axes = sources[0][1]
                joined = bb.emit(R.concat([x for x, _ in sources], axis=axes[int(value.attrs.axis) % len(axes)]))
                return transposed(bb, var, joined, axes)
        return emit_as_is(bb, var, value)

    return rewrite_main(mod, rule)


def channels_last_pass(is_int8_conv):
    """The module pass; it leaves a module without an int8 convolution (`is_int8_conv(call)`) as it is."""

    @tvm.transform.module_pass(opt_level=0, name="qcompile.ChannelsLast")
    def _pass(mod, _ctx):
        if not any(op_name(v) == "nn.conv2d" and is_int8_conv(v) for _, v in main_bindings(mod)):
            return mod
        mod = rewrite_main(mod, _before_convert_layout)
        mod = sink_transposes(convert_layout(mod))
        # the weights' transposes in numpy first: FoldConstant compiles each with LLVM (1.6-3 s a small CNN)
        return tvm.transform.Sequential([FoldConstantsWithNumpy, FoldRemainingConstants, relax.transform.CanonicalizeBindings(),
                                         relax.transform.DeadCodeElimination(["main"])])(mod)

    return _pass
