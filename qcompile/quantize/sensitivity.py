"""sensitivity: how much each compute layer, lowered alone to int4, int8, int4w (block-wise int4
weights, float activations) or fp16, changes the model's output, measured on calibration data.

One module is compiled for every configuration ("switchable"): each compute layer reads its
weight as a new input and its activation through

    x' = x + q * (qdq(x) - x) + h * (fp16(x) - x)

with `q` and `h` scalar inputs, so a layer is fp32 (q = h = 0), int8 activations (q = 1, weight
fake-quantized to 8 or 4 bits), int4w (q = h = 0, block-wise int4 weight) or fp16 (h = 1, weight
rounded to float16). Any per-layer
configuration is then a set of arguments, not a build: the per-layer sweep and the evaluation of
whole candidate configurations both run on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import const_value, emit_as_is, is_const, main_bindings, op_name, rewrite_main
from .annotate import Plan
from .blockwise import dequantize_blockwise, quantize_blockwise
from .insert_qdq import fake_quantize_weight, qdq
from .params import QParams

LOWERED = ("int4", "int8", "int4w", "fp16")  # what a layer is lowered to from fp32


@dataclass(frozen=True)
class Layer:
    name: str
    op: str  # nn.conv2d | matmul | nn.conv1d
    weight: np.ndarray
    depthwise: bool  # grouped convolution (no 4-bit storage in the packed kernels)

    def weight_for(self, precision: str, per_channel: bool = True, group_size: int = 128) -> np.ndarray:
        if precision == "fp32":
            return self.weight
        if precision == "fp16":
            return self.weight.astype(np.float16).astype(np.float32)
        if precision == "int4w":
            codes, scales = quantize_blockwise(self.weight, group_size)
            return dequantize_blockwise(codes, scales, self.weight.shape[0])
        return fake_quantize_weight(self.op, self.weight, per_channel, 4 if precision == "int4" else 8)

    def allowed(self) -> tuple[str, ...]:
        """Precisions this layer has real kernels for."""
        if self.op == "nn.conv1d":
            return ("int8", "fp32")
        if self.op == "matmul" and self.weight.ndim == 2:
            return ("int4", "int8", "int4w", "fp16", "fp32")
        return ("int8", "fp16", "fp32") if self.depthwise else ("int4", "int8", "fp16", "fp32")


def compute_layers(mod, p: Plan) -> list[Layer]:
    """The plan's compute nodes with a constant weight, in program order."""
    defs = dict(main_bindings(mod))
    layers = []
    for node in p.nodes:
        value = defs[node.members[0]]
        if node.kind != "compute" or not is_const(value.args[1]):
            continue
        grouped = op_name(value) == "nn.conv2d" and int(value.attrs.groups) > 1
        layers.append(Layer(node.name, op_name(value), const_value(value.args[1]), grouped))
    return layers


def switchable_module(mod, p: Plan, qparams: dict[str, QParams], layers: list[Layer]):
    """`mod` with per-layer weight and switch inputs after the model's own inputs (see above)."""
    by_name = {n.name: n for n in p.nodes}
    slots = {}
    extra = []
    for i, layer in enumerate(layers):
        node = by_name[layer.name]
        w = relax.Var(f"w{i}", relax.TensorType(list(layer.weight.shape), "float32"))
        q = relax.Var(f"q{i}", relax.TensorType([], "float32"))
        h = relax.Var(f"h{i}", relax.TensorType([], "float32"))
        extra += [w, q, h]
        slots[node.members[0]] = (w, q, h, qparams[p.site_of(node.inputs[0])])

    def rule(bb, var, value):
        if var not in slots:
            return emit_as_is(bb, var, value)
        w, q, h, qp = slots[var]
        x = value.args[0]
        x_q = bb.emit(R.subtract(qdq(x, qp), x))
        x_h = bb.emit(R.subtract(R.astype(R.astype(x, "float16"), "float32"), x))
        x_sw = bb.emit(R.add(x, R.add(R.multiply(q, x_q), R.multiply(h, x_h))), f"{var.name}_switched")
        return bb.emit(relax.Call(value.op, [x_sw, w, *value.args[2:]], value.attrs, value.ty_args), str(var.name))

    return rewrite_main(mod, rule, extra_params=extra)


class Simulator:
    """Runs any per-layer configuration of one compiled switchable module."""

    def __init__(self, mod, p: Plan, qparams: dict[str, QParams], layers: list[Layer], batches: list[dict],
                 input_names: list[str], engine, per_channel: bool = True, group_size: int = 128):
        self.layers = layers
        self.per_channel = per_channel
        self.group_size = group_size
        self.vm = engine(switchable_module(mod, p, qparams, layers))
        self.inputs = as_tensors(batches, input_names)
        self._weights: dict = {}
        self.reference = self.run({})

    def _weight(self, i: int, precision: str):
        import tvm

        key = (i, precision)
        if key not in self._weights:
            self._weights[key] = tvm.runtime.tensor(self.layers[i].weight_for(precision, self.per_channel, self.group_size).astype(np.float32))
        return self._weights[key]

    def run(self, config: dict[str, str]) -> np.ndarray:
        """The model's first output over every batch, each layer at config.get(name, 'fp32')."""
        import tvm

        switches = []
        for i, layer in enumerate(self.layers):
            precision = config.get(layer.name, "fp32")
            q = 1.0 if precision in ("int4", "int8") else 0.0
            h = 1.0 if precision == "fp16" else 0.0
            switches += [self._weight(i, precision), tvm.runtime.tensor(np.float32(q)), tvm.runtime.tensor(np.float32(h))]
        return run_batches(self.vm, self.inputs, switches)


def as_tensors(batches: list[dict], input_names: list[str]) -> list[list]:
    """Each batch's inputs as runtime tensors, in the order of `input_names`."""
    import tvm

    return [[tvm.runtime.tensor(np.ascontiguousarray(b[n])) for n in input_names] for b in batches]


def run_batches(vm, inputs: list[list], extra: list = ()) -> np.ndarray:
    """The first output of vm["main"](*batch, *extra) over every batch, concatenated."""
    outs = []
    for args in inputs:
        result = vm["main"](*args, *extra)
        outs.append((result if hasattr(result, "numpy") else result[0]).numpy())
    return np.concatenate(outs)


def output_noise(y: np.ndarray, reference: np.ndarray) -> float:
    """Relative output noise: ||y - ref||^2 / ||ref||^2 (additive across layers, to first order)."""
    return float(np.sum((y.astype(np.float64) - reference) ** 2) / max(np.sum(reference.astype(np.float64) ** 2), 1e-30))


def top1_metric(y: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> float:
    """Top-1 accuracy against `labels` in percent, or without labels top-1 agreement with `reference`."""
    truth = labels if labels is not None else reference.reshape(len(reference), -1).argmax(1)
    return 100.0 * float(np.mean(y.reshape(len(y), -1).argmax(1) == truth))


def layer_sensitivity(sim: Simulator, labels: np.ndarray | None = None, progress: bool = True) -> dict:
    """{layer: {precision: {"noise", "drop"}}} for each layer lowered alone."""
    from tqdm import tqdm

    base = top1_metric(sim.reference, sim.reference, labels)
    table = {}
    jobs = [(layer, p) for layer in sim.layers for p in LOWERED if p in layer.allowed()]
    for layer, precision in tqdm(jobs, desc="sensitivity", unit="layer", disable=not progress):
        y = sim.run({layer.name: precision})
        table.setdefault(layer.name, {})[precision] = {
            "noise": output_noise(y, sim.reference), "drop": base - top1_metric(y, sim.reference, labels)}
    for layer in sim.layers:
        table.setdefault(layer.name, {})["fp32"] = {"noise": 0.0, "drop": 0.0}
    return table
