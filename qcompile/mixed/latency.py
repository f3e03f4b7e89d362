"""The latency table: each layer's kernels at each precision, and the quantize/dequantize on the
edges between layers, measured on the target's device."""

from __future__ import annotations

import dataclasses

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..builder import compile_module
from ..frontends.common import TensorInfo
from ..ir import const, main_bindings, substitute, tensor_shape
from ..quantize import quantize_module
from ..quantize.search import INTEGER, layer_edges


def layer_module(mod, node):
    """The compute node (op and epilogue) alone, as a module of one float input."""
    defs = dict(main_bindings(mod))
    x_in = defs[node.members[0]].args[0]
    x = relax.Var("x", relax.TensorType(list(tensor_shape(x_in)), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            remap = {x_in: x}
            for m in node.members:
                remap[m] = bb.emit(substitute(defs[m], remap), str(m.name))
            out = bb.emit_output(remap[node.members[-1]])
        bb.emit_func_output(out)
    return bb.get()


def measure_layer_latency(mod, node, precision: str, spec, base, device, engine) -> float:
    """Microseconds of the layer's kernels at `precision` on `device` (a backend Device), float
    in and out (an integer layer includes quantizing its input and dequantizing its output)."""
    single = layer_module(mod, node)
    shape = tuple(tensor_shape(single["main"].params[0]))
    sample = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    config = dataclasses.replace(base, precisions={node.name: precision}, skip_layers=frozenset(), progress=False)
    qmod, _ = quantize_module(single, [TensorInfo("x", shape, "float32")], [{"x": sample}], config, [node.name],
                             engine=engine)
    return device.model_us(compile_module(qmod, spec), [sample])


CONVERSION_SIZES = (4096, 1 << 20)


def measure_conversions(spec, device) -> dict[str, list[float]]:
    """{"quantize" | "dequantize": [a, b]}: microseconds for n elements as a + b * n, from two sizes
    of a per-tensor int8 quantize (float -> int8) and dequantize (int8 -> float) on `device`."""
    fits = {}
    for kind, dtype in (("quantize", "float32"), ("dequantize", "int8")):
        times = []
        for n in CONVERSION_SIZES:
            x = relax.Var("x", relax.TensorType([n], dtype))
            bb = relax.BlockBuilder()
            with bb.function("main", [x]):
                convert = R.quantize if kind == "quantize" else R.dequantize
                out_dtype = "int8" if kind == "quantize" else "float32"
                with bb.dataflow():
                    y = bb.emit_output(convert(x, const(0.05, "float32"), const(0, "int32"), axis=0, out_dtype=out_dtype))
                bb.emit_func_output(y)
            times.append(device.model_us(compile_module(bb.get(), spec), [np.ones(n, dtype)]))
        slope = max(times[1] - times[0], 0.0) / (CONVERSION_SIZES[1] - CONVERSION_SIZES[0])
        fits[kind] = [max(times[0] - slope * CONVERSION_SIZES[0], 0.0), slope]
    return fits


def boundary_costs(mod, p, layers, measured: dict, conversions: dict) -> tuple[dict, list]:
    """Per-layer latency without the quantize/dequantize that `measured` charged each integer layer
    (it had float on both sides), and those conversions as edges (producer, consumer, dequantize,
    quantize) between layers; a layer fed by the model's input, or feeding its output, keeps the
    conversion on that side."""
    defs = dict(main_bindings(mod))
    nodes = {n.name: n for n in p.nodes}

    def us(kind, var):
        a, b = conversions[kind]
        return a + b * float(np.prod(tensor_shape(var)))

    q = {l.name: us("quantize", defs[nodes[l.name].members[0]].args[0]) for l in layers}
    dq = {l.name: us("dequantize", nodes[l.name].members[-1]) for l in layers}
    pairs = layer_edges(p, [l.name for l in layers])
    fed = {b for _, b in pairs}
    feeding = {a for a, _ in pairs}
    cost = {}
    for l in layers:
        inner = q[l.name] * (l.name in fed) + dq[l.name] * (l.name in feeding)
        cost[l.name] = {pr: max(t - inner, 0.0) if pr in INTEGER else t for pr, t in measured[l.name].items()}
    return cost, [(a, b, dq[a], q[b]) for a, b in pairs]
