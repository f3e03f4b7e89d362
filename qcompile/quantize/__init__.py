"""Post-training quantization as Relax passes: annotate -> calibrate -> insert_qdq -> realize.

`quantize_module` is the one entry point: a float Relax module (after the float passes) and a
QuantConfig in, the quantized module and a per-layer report out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import QCompileError
from ..ir import const_value, is_const, main_bindings, op_name
from ..layers import layer_table
from ..ops import FLOAT_ONLY, OP_KINDS, short_name
from .annotate import Plan, Policy, annotate, plan
from .blockwise import GROUP_SIZES
from .calib_data import load_calibration
from .calibrate import choose_qparams, collect
from .dynamic import MODES as DYNAMIC_MODES
from .dynamic import dynamic_quantize
from .half import half_precision
from .insert_qdq import insert_qdq, weight_axis
from .params import QParams, activation_qparams, weight_qparams
from .ranges import METHODS
from .realize import realize
from .smooth import smooth

STATIC_MODES = ("static", "simulate")
# per compute layer: int4 = 4-bit weights, int8 activations; int4w = int4 block-wise weights
# (blockwise.py, groups of QuantConfig.group_size), float activations: a matmul only
PRECISIONS = ("int4", "int8", "int4w", "fp16", "fp32")
FLOAT_ACTIVATIONS = ("int4w", "fp16", "fp32")
ALL_MODES = STATIC_MODES + DYNAMIC_MODES


@dataclass
class QuantConfig:
    mode: str = "static"  # static (integer kernels), simulate (fake-quant in float), dynamic, weight-only
    method: str = "percentile"  # calibration: minmax | percentile | entropy | mse (see benchmarks/results/accuracy.md)
    percentile: float = 99.99
    per_channel: bool = True  # weights per output channel (else per tensor)
    # 7: weights in [-63, 63] (onnxruntime's reduce_range), which AVX2 multiplies with vpmaddubsw,
    # four products per instruction, where 8-bit weights take the exact int16 kernel (two)
    # 4: int4 block-wise weights (weight-only mode): a scale per `group_size` weights along K
    weight_bits: int = 8
    group_size: int = 128  # 32 | 64 | 128, or 0: one group over all of K (per output channel)
    symmetric: bool = True  # activations int8 symmetric (else uint8 asymmetric)
    bias_correction: bool = True  # fold the mean error of quantized weights into the bias
    skip_layers: frozenset = field(default_factory=frozenset)
    skip_ops: frozenset = field(default_factory=frozenset)
    precisions: dict = field(default_factory=dict)  # layer -> int4 | int8 | fp16 | fp32; others int8
    # SmoothQuant's alpha in [0, 1] (smooth.py): activation outliers moved into the weights before calibration
    smooth_quant: float | None = None
    # activation ranges fixed by hand, (lo, hi) by site or layer name (a layer's is its output's): calibration's are replaced
    ranges: dict = field(default_factory=dict)
    progress: bool = True

    def check(self) -> None:
        if self.mode not in ALL_MODES:
            raise QCompileError(f"unknown quantization mode '{self.mode}'; choose from {', '.join(ALL_MODES)}")
        if self.method not in METHODS:
            raise QCompileError(f"unknown calibration method '{self.method}'; choose from {', '.join(METHODS)}")
        if not 0.0 < self.percentile <= 100.0:
            raise QCompileError(f"percentile {self.percentile} is outside (0, 100]")
        if self.weight_bits not in (4, 7, 8):
            raise QCompileError(f"--weight-bits {self.weight_bits}: choose 8, 7 (reduced range) or 4 (block-wise)")
        if self.weight_bits == 4 and self.mode != "weight-only":
            raise QCompileError("--weight-bits 4 is int4 block-wise weights, used with --mode weight-only "
                                "(per-layer int4 with int8 activations: --quantize mixed or --precision-config)")
        if self.group_size not in (0, *GROUP_SIZES):
            raise QCompileError(f"--group-size {self.group_size}: choose 32, 64, 128, or 0 (one group per channel)")
        if self.smooth_quant is not None and not (0.0 <= self.smooth_quant <= 1.0 and self.mode in STATIC_MODES):
            raise QCompileError(f"--smooth-quant {self.smooth_quant}: an alpha in [0, 1], with --mode static or simulate")
        bad = {layer: p for layer, p in self.precisions.items() if p not in PRECISIONS}
        if bad:
            layer, p = next(iter(bad.items()))
            raise QCompileError(f"layer '{layer}': unknown precision '{p}'; choose from {', '.join(PRECISIONS)}")

    def float_layers(self) -> frozenset:
        """Layers left as float islands: skipped, or given fp16/fp32."""
        return frozenset(self.skip_layers) | {n for n, p in self.precisions.items() if p in FLOAT_ACTIVATIONS}

    def blockwise_layers(self) -> frozenset:
        return frozenset(n for n, p in self.precisions.items() if p == "int4w")

    def weights(self) -> str:
        if self.weight_bits == 4:
            return (f"int4 block-wise, groups of {self.group_size} along K" if self.group_size
                    else "int4 per output channel")
        return (("int8 symmetric " if self.weight_bits == 8 else "int8 (7-bit range) symmetric ")
                + ("per-channel" if self.per_channel else "per-tensor"))

    def describe(self) -> dict:
        if self.mode in DYNAMIC_MODES:  # no calibration: its fields would describe nothing that ran
            return {"mode": self.mode, "weights": self.weights(),
                    "activations": "int8, scale at run time" if self.mode == "dynamic" else "float32"}
        described = {"mode": self.mode, "method": self.method, "percentile": self.percentile,
                     "weights": self.weights(),
                     "activations": "int8 symmetric" if self.symmetric else "uint8 asymmetric",
                     "bias_correction": self.bias_correction}
        if self.smooth_quant is not None:
            described["smooth_quant_alpha"] = self.smooth_quant
        if self.precisions:
            described["precisions"] = dict(self.precisions)
        if self.ranges:
            described["ranges"] = {site: [float(lo), float(hi)] for site, (lo, hi) in self.ranges.items()}
        return described


def has_qdq(mod) -> bool:
    """True for a pre-quantized (QDQ) model: it already holds quantize/dequantize ops."""
    return any(op_name(v) in ("quantize", "dequantize") for _, v in main_bindings(mod))


def _scale_summary(qp: QParams | None) -> dict | None:
    if qp is None:
        return None
    s = np.atleast_1d(qp.scale)
    if s.size == 1:
        return {"scale": float(s[0]), "zero_point": int(np.atleast_1d(qp.zero_point)[0]), "dtype": qp.dtype}
    return {"scale_min": float(s.min()), "scale_max": float(s.max()), "channels": int(s.size), "dtype": qp.dtype}


def _precision(node, config: QuantConfig) -> str:
    chosen = config.precisions.get(node.name)
    if not node.quantized:
        return chosen if chosen in ("fp16", "int4w") else "fp32"
    return "int4" if chosen == "int4" and node.kind == "compute" else "int8"


def _report(mod, p: Plan, qparams: dict[str, QParams], config: QuantConfig) -> list[dict]:
    defs = dict(main_bindings(mod))
    rows = []
    for node in p.nodes:
        row = {"name": node.name, "op": node.op, "precision": _precision(node, config),
               "inputs": [_scale_summary(qparams.get(p.site_of(v))) for v in node.inputs] if node.quantized else [],
               "output": _scale_summary(qparams.get(p.sites.get(node.outputs[0]))) if node.outputs else None}
        first = defs.get(node.members[0])
        if node.kind == "compute" and node.quantized and is_const(first.args[1]):
            w = const_value(first.args[1])
            bits = 4 if row["precision"] == "int4" else config.weight_bits
            row["weight"] = _scale_summary(weight_qparams(w, weight_axis(op_name(first), w, config.per_channel, first.attrs), bits))
        if not node.quantized:
            row["why"] = _why_float(node, config)
        rows.append(row)
    counts: dict = {}
    for _, value in main_bindings(mod):  # ops with no integer form: float islands, said so
        op = op_name(value)
        if op in FLOAT_ONLY:
            counts[op] = counts.get(op, 0) + 1
            rows.append({"name": f"{short_name(op)}_{counts[op] - 1}", "op": short_name(op), "precision": "fp32",
                         "inputs": [], "output": None, "why": FLOAT_ONLY[op]})
    return rows


def _why_float(node, config: QuantConfig) -> str:
    if node.name in config.skip_layers:
        return "kept float by --skip"
    if config.precisions.get(node.name) == "int4w":
        return f"int4 block-wise weights (groups of {config.group_size}) with float activations, by the precision config"
    if config.precisions.get(node.name) in ("fp16", "fp32"):
        return f"{config.precisions[node.name]} by the precision config"
    if node.op in config.skip_ops:
        return f"kept float by --skip-op {node.op}"
    if node.kind == "elementwise":
        return "no int8 layer reads it, so a lookup table would save nothing"
    if node.kind != "compute":
        return "only the model's outputs read it: in int8 it would only round what the layers before it computed"
    return "kept float"


def quantize_and_simulate(mod, inputs, calib, config: QuantConfig, layer_names=None, *, engine=None):
    """(quantized module, report dict, simulated module or None): quantize_module, plus the QDQ
    simulation a static (integer) module was realized from, which its build is checked against."""
    if config.mode != "static":
        return (*quantize_module(mod, inputs, calib, config, layer_names, engine=engine), None)
    simulated, report = quantize_module(mod, inputs, calib, replace(config, mode="simulate"), layer_names, engine=engine)
    report["config"] = config.describe()
    return realize(simulated, config.per_channel), report, simulated


def quantize_module(mod, inputs, calib=None, config: QuantConfig | None = None, layer_names=None, *, engine=None):
    """(quantized module, report dict). `inputs` are the model's TensorInfos; `calib` is the
    calibration data and `engine` what runs a module on it (backends.host_engine: a module in, a
    Relax VM out), both required by the static and simulate modes."""
    config = config or QuantConfig()
    config.check()
    report = {"config": config.describe(), "layers": []}
    if config.mode in DYNAMIC_MODES:
        out = dynamic_quantize(mod, config.mode, config.per_channel, config.skip_layers, layer_names,
                               config.weight_bits, config.group_size)
        report["layers"] = [{"name": row["name"], "op": "matmul",
                             "precision": f"{row['weight_dtype'] if row['weight_dtype'] == 'int4' else 'int8'} ({config.mode})"}
                            for row in layer_table(out, layer_names) if row["name"] not in config.skip_layers
                            and row["op"] == "matmul" and row["weight_dtype"] in ("int4", "int8")]
        return out, report
    c = calibrate_model(mod, inputs, calib, config, layer_names, engine=engine)
    half = {c.compute_var[n] for n, prec in config.precisions.items() if prec == "fp16" and n in c.compute_var}
    # fp16 before realize: it renames the float bindings it re-emits
    simulated = half_precision(insert_qdq(c.annotated, c.qparams, config.per_channel, c.means, c.weight_bits), half)
    if config.blockwise_layers():  # float matmuls in the plan; their weights become int4 block-wise kernels here
        simulated = dynamic_quantize(simulated, "weight-only", layers=config.blockwise_layers(), names=layer_names,
                                     weight_bits=4, group_size=config.group_size)
    report["layers"] = _report(c.float_mod, c.plan, c.qparams, config)
    report["calibration_batches"] = len(c.batches)
    if config.mode == "simulate":
        return simulated, report
    return realize(simulated, config.per_channel), report


@dataclass
class Calibrated:
    """The static quantizer up to its parameters: what insert_qdq needs, and what it was chosen from."""
    float_mod: object  # the module the plan's variables belong to
    batches: list[dict]
    plan: Plan
    annotated: object  # the float module with observe markers
    observers: dict  # site -> HistogramObserver
    qparams: dict  # site -> QParams
    means: dict | None  # site -> mean calibration batch (bias correction), None without it
    compute_var: dict  # compute layer name -> the name of its op's binding
    weight_bits: dict  # compute bindings (by name) with weights of fewer than 8 bits (4, or 7 by config)


def calibrate_model(mod, inputs, calib, config: QuantConfig, layer_names=None, *, engine=None) -> Calibrated:
    """Plan, annotate and calibrate `mod` for the static and simulate modes of `config`."""
    if calib is None:
        raise QCompileError(f"--quantize int8 ({config.mode}) needs calibration data (--calib)")
    if engine is None:
        raise TypeError("quantize_module: the static and simulate modes need an engine to calibrate with")
    batches = load_calibration(calib, inputs)
    if config.smooth_quant is not None:
        mod = smooth(mod, batches, [t.name for t in inputs], engine, config.smooth_quant)
    policy = Policy(config.float_layers(), frozenset(config.skip_ops))
    p = plan(mod, layer_names, policy)
    _check_skips(p, config)
    fixed = _fixed_ranges(config, p)
    annotated = annotate(mod, planned=p)
    observers = collect(annotated, batches, [t.name for t in inputs], engine, config.progress)
    qparams = choose_qparams(observers, config.method, config.percentile, config.symmetric)
    qparams.update({site: activation_qparams(lo, hi, config.symmetric) for site, (lo, hi) in fixed.items()})
    means = {site: obs.mean_batch for site, obs in observers.items()} if config.bias_correction else None
    compute_var = {n.name: str(n.members[0].name) for n in p.nodes if n.kind == "compute"}
    bits = {var: config.weight_bits for var in compute_var.values()} if config.weight_bits != 8 else {}
    bits.update({compute_var[n]: 4 for n, prec in config.precisions.items() if prec == "int4" and n in compute_var})
    return Calibrated(mod, batches, p, annotated, observers, qparams, means, compute_var, bits)


def _fixed_ranges(config: QuantConfig, p: Plan) -> dict:
    """config.ranges by site name (a layer's name stands for its output's site)."""
    sites = set(p.sites.values())
    fixed = {}
    for name, (lo, hi) in config.ranges.items():
        site = name if name in sites else f"{name}.out"
        if site not in sites:
            shown = ", ".join(sorted(sites)[:8])
            raise QCompileError(f"a fixed range names '{name}', which is no quantized tensor or layer output; "
                                f"tensors include: {shown}")
        fixed[site] = (lo, hi)
    return fixed


def _check_skips(p: Plan, config: QuantConfig) -> None:
    known = {n.name for n in p.nodes}
    unknown = sorted(set(config.skip_layers) - known)
    if unknown:
        shown = ", ".join(sorted(known)[:8])
        raise QCompileError(f"--skip names unknown layer(s) {unknown}; layers include: {shown}")
    compute = {n.name for n in p.nodes if n.kind == "compute"}
    unknown = sorted(set(config.precisions) - compute)
    if unknown:
        shown = ", ".join(sorted(compute)[:8])
        raise QCompileError(f"precision config names unknown layer '{unknown[0]}'; compute layers include: {shown}")
    ops = {short_name(op) for kind_ops in OP_KINDS.values() for op in kind_ops} | {"elementwise"}
    unknown_ops = sorted(set(config.skip_ops) - ops)
    if unknown_ops:
        raise QCompileError(f"--skip-op names unknown op(s) {unknown_ops}; quantizable ops: {', '.join(sorted(ops))}")


__all__ = ["QuantConfig", "Calibrated", "calibrate_model", "quantize_module", "quantize_and_simulate", "PRECISIONS", "half_precision", "has_qdq", "realize", "annotate", "plan", "insert_qdq",
           "dynamic_quantize", "METHODS", "ALL_MODES"]
