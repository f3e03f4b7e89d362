"""Mixed precision: choose int4 / int8 / fp16 / fp32 per compute layer under a maximum drop of
the top-1 metric, minimising measured latency or bytes, then build the choice.

    sensitivity (quantize/sensitivity.py) -> per-layer cost (measured here) and, for latency, the
    quantize/dequantize cost on each edge between layers -> ILP sweep (quantize/search.py) ->
    candidates checked in simulation, cheapest first -> built, their real metric checked against
    the budget; for latency the first few within budget (and uniform int8, when it is within) are
    timed as whole models and the fastest wins, since per-layer sums only predict

The choice is written as JSON ({"precisions": {layer: precision}, ...}) that `--precision-config`
reads back to rebuild without searching."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import QCompileError

OBJECTIVES = ("latency", "size")
BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclass
class MixedResult:
    precisions: dict[str, str]
    layers: list[dict]  # per layer: name, op, group, sensitivity, latency, bytes, chosen
    candidates: list[dict]  # predicted noise / cost, simulated metric, per configuration
    objective: str
    max_drop: float
    metric: str
    float_metric: float
    checked: list[dict] = field(default_factory=list)  # built candidates: real metric, accepted
    uniform: dict = field(default_factory=dict)  # "int8" / "fp32" everywhere, scored like the candidates

    def to_json(self) -> dict:
        return {"precisions": self.precisions, "objective": self.objective, "max_accuracy_drop": self.max_drop,
                "metric": self.metric, "float_metric": self.float_metric, "layers": self.layers,
                "candidates": self.candidates, "checked": self.checked, "uniform": self.uniform}


def read_precision_config(path) -> dict[str, str]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise QCompileError(f"{path}: not a readable precision config ({err})") from None
    precisions = data.get("precisions") if isinstance(data, dict) else None
    if not isinstance(precisions, dict):
        raise QCompileError(f"{path}: a precision config needs a 'precisions' object of layer -> precision")
    return {str(k): str(v) for k, v in precisions.items()}


def layer_module(mod, node):
    """The compute node (op and epilogue) alone, as a module of one float input."""
    from tvm import relax

    from .ir import main_bindings, substitute, tensor_shape

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


def measure_layer_latency(mod, node, precision: str, spec, base, device) -> float:
    """Microseconds of the layer's kernels at `precision` on `device` (tune.measuring_device), float
    in and out (an integer layer includes quantizing its input and dequantizing its output)."""
    import dataclasses

    from .frontends.common import TensorInfo
    from .pipeline import compile_module
    from .quantize import quantize_module
    from .ir import tensor_shape

    single = layer_module(mod, node)
    shape = tuple(tensor_shape(single["main"].params[0]))
    sample = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    config = dataclasses.replace(base, precisions={node.name: precision}, skip_layers=frozenset(), progress=False)
    qmod, _ = quantize_module(single, [TensorInfo("x", shape, "float32")], [{"x": sample}], config, [node.name])
    return device.vm_us(compile_module(qmod, spec), [sample])


CONVERSION_SIZES = (4096, 1 << 20)


def measure_conversions(spec, device) -> dict[str, list[float]]:
    """{"quantize" | "dequantize": [a, b]}: microseconds for n elements as a + b * n, from two sizes
    of a per-tensor int8 quantize (float -> int8) and dequantize (int8 -> float) on `device`."""
    from tvm import relax
    from tvm.relax import op as R

    from .pipeline import compile_module
    from .ir import const

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
            times.append(device.vm_us(compile_module(bb.get(), spec), [np.ones(n, dtype)]))
        slope = max(times[1] - times[0], 0.0) / (CONVERSION_SIZES[1] - CONVERSION_SIZES[0])
        fits[kind] = [max(times[0] - slope * CONVERSION_SIZES[0], 0.0), slope]
    return fits


def boundary_costs(mod, p, layers, measured: dict, conversions: dict) -> tuple[dict, list]:
    """Per-layer latency without the quantize/dequantize that `measured` charged each integer layer
    (it had float on both sides), and those conversions as edges (producer, consumer, dequantize,
    quantize) between layers; a layer fed by the model's input, or feeding its output, keeps the
    conversion on that side."""
    from .ir import main_bindings, tensor_shape
    from .quantize.search import INTEGER, layer_edges

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


class Cache:
    """One JSON file per (model, target, calibration settings): sensitivities and latencies survive reruns."""

    def __init__(self, folder: Path | None, key: str):
        self.path = None if folder is None else Path(folder) / f"{key}.json"
        self.data = {}
        if self.path is not None and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except ValueError:
                self.data = {}

    def get(self, section: str, compute):
        if section not in self.data:
            self.data[section] = compute()
            self.save()
        return self.data[section]

    def save(self):
        if self.path is None:
            return
        from .atomic import atomic_file

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.path) as tmp:
            Path(tmp).write_text(json.dumps(self.data))


def _cache_key(model, spec, calib_batches, labels, base) -> str:
    h = hashlib.sha256(Path(model).read_bytes() if Path(str(model)).is_file() else str(model).encode())
    h.update(spec.name.encode())
    for b in calib_batches:
        for k in sorted(b):
            h.update(np.ascontiguousarray(b[k]).tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    h.update(json.dumps(base.describe(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _check_latency_target(spec) -> None:
    if spec.kind != "llvm" or spec.arch != platform.machine():
        raise QCompileError(f"--objective latency measures kernels on this machine; target '{spec.name}' "
                            f"({spec.arch}) does not run here: use --objective size")


def search(prepared, calib, *, labels=None, max_drop: float = 0.5, objective: str = "latency", base=None,
           cache_dir=None, progress: bool = True, steps: int = 16, timed_candidates: int = 3,
           rpc=None) -> tuple[MixedResult, object]:
    """(result, quantized module of the chosen configuration). `prepared`: pipeline.prepare(...)
    without quantization; `calib`: calibration data (also the data the metric is measured on);
    `labels`: one class per calibration sample (else top-1 agreement with the float model);
    `timed_candidates`: for latency, how many candidates within budget are built and timed whole;
    `rpc` (tune.RPC): measure latencies on a device at a TVM RPC tracker instead of this machine."""
    import dataclasses

    import tvm
    from tvm import relax

    from .pipeline import compile_module
    from .quantize import QuantConfig, quantize_module
    from .quantize.annotate import annotate, plan
    from .quantize.calib_data import load_calibration
    from .quantize.calibrate import choose_qparams, collect, host_vm
    from .quantize.search import candidates, group_tables, layer_groups, predicted
    from .quantize.sensitivity import (Simulator, as_tensors, compute_layers, layer_sensitivity, output_noise,
                                       run_batches, top1_metric)

    if objective not in OBJECTIVES:
        raise QCompileError(f"unknown objective '{objective}'; choose from {', '.join(OBJECTIVES)}")
    if not max_drop >= 0:
        raise QCompileError(f"--max-accuracy-drop must be a number of points >= 0, not {max_drop}")
    spec, imported, mod = prepared.spec, prepared.imported, prepared.float_mod
    device = None
    if objective == "latency":
        from .tune import measuring_device

        if rpc is None:
            _check_latency_target(spec)
        device = measuring_device(spec, rpc)
    base = dataclasses.replace(base or QuantConfig(), mode="static", precisions={})
    names = [t.name for t in imported.inputs]
    batches = load_calibration(calib, imported.inputs)
    if labels is not None:
        labels = np.asarray(np.load(labels) if isinstance(labels, (str, Path)) else labels).reshape(-1)
        samples = sum(len(b[names[0]]) for b in batches)
        if len(labels) != samples:
            raise QCompileError(f"--labels: {len(labels)} labels for {samples} calibration samples")
    cache = Cache(cache_dir, _cache_key(imported.source, spec, batches, labels, base))

    p = plan(mod, imported.layer_names)
    observers = collect(annotate(mod, planned=p), batches, names, progress)
    qparams = choose_qparams(observers, base.method, base.percentile, base.symmetric)
    layers = compute_layers(mod, p)
    if not layers:
        raise QCompileError(f"{imported.source}: no convolution or matmul with constant weights to choose a precision for")
    sim = Simulator(mod, p, qparams, layers, batches, names, base.per_channel)
    float_metric = top1_metric(sim.reference, sim.reference, labels)
    sens = cache.get("sensitivity", lambda: layer_sensitivity(sim, labels, progress))

    has_int4_storage = _packs_int4(spec)
    allowed = {l.name: tuple(q for q in l.allowed() if q != "int4" or has_int4_storage) for l in layers}
    nodes = {n.name: n for n in p.nodes}
    edges = []
    if objective == "size":
        cost = {l.name: {q: l.weight.size * BYTES_PER_WEIGHT[q] for q in allowed[l.name]} for l in layers}
    else:
        def latencies():
            from tqdm import tqdm

            table = {}
            jobs = [(l, q) for l in layers for q in allowed[l.name]]
            for l, q in tqdm(jobs, desc="layer latency", unit="kernel", disable=not progress):
                table.setdefault(l.name, {})[q] = measure_layer_latency(mod, nodes[l.name], q, spec, base, device)
            return table
        cost, edges = boundary_costs(mod, p, layers, cache.get("latency_us", latencies),
                                     cache.get("conversion_us", lambda: measure_conversions(spec, device)))
    noise = {n: {q: v["noise"] for q, v in t.items()} for n, t in sens.items()}
    groups = layer_groups(p, [l.name for l in layers])
    options = group_tables(groups, allowed, noise, cost)

    def scored(config):
        y = sim.run(config)
        pn, pc = predicted(config, noise, cost, edges)
        return {"precisions": config, "predicted_noise": pn, "predicted_cost": pc,
                "simulated_noise": output_noise(y, sim.reference),
                "simulated_drop": float_metric - top1_metric(y, sim.reference, labels)}

    found = [scored(config) for config in candidates(groups, options, steps, edges)]
    group_of = {n: i for i, g in enumerate(groups) for n in g}
    result = MixedResult({}, [], found, objective, max_drop, "top-1 accuracy" if labels is not None else
                         "top-1 agreement with float", float_metric,
                         uniform={u: scored({l.name: u for l in layers}) for u in ("int8", "fp32")})

    pending = sorted((c for c in found if c["simulated_drop"] <= max_drop), key=lambda c: c["predicted_cost"])
    int8 = result.uniform["int8"]
    if objective == "latency" and int8["simulated_drop"] <= max_drop and int8["precisions"] not in [c["precisions"] for c in pending]:
        pending.append(int8)  # the baseline a mixed choice must beat, timed beside the candidates
    within, timed = [], 0
    for cand in pending:
        # compared by value: a simulated candidate may itself be uniform int8, and it is the baseline then
        baseline = cand["precisions"] == int8["precisions"]
        if objective == "latency" and not baseline and timed >= timed_candidates:
            continue
        config = dataclasses.replace(base, precisions=cand["precisions"], progress=False)
        qmod, report = quantize_module(mod, imported.inputs, batches, config, imported.layer_names)
        executable = compile_module(qmod, spec) if objective == "latency" else None
        local = executable is not None and rpc is None  # latency here: the target runs on this machine
        vm = relax.VirtualMachine(executable, tvm.cpu()) if local else host_vm(qmod)
        drop = float_metric - top1_metric(run_batches(vm, as_tensors(batches, names)), sim.reference, labels)
        checked = {"precisions": cand["precisions"], "real_drop": drop, "accepted": False}
        result.checked.append(checked)
        if drop > max_drop:
            continue
        within.append((checked, qmod, report))
        if objective == "size":
            break
        checked["latency_us"] = device.vm_us(executable, [np.asarray(batches[0][n]) for n in names])
        timed += not baseline
    if within:
        checked, qmod, report = min(within, key=lambda w: w[0].get("latency_us", 0.0))  # size: the first
        checked["accepted"] = True
        result.precisions = checked["precisions"]
        result.layers = [{"name": l.name, "op": l.op, "group": group_of[l.name], "sensitivity": sens[l.name],
                          objective: cost[l.name], "precision": result.precisions[l.name]} for l in layers]
        return result, (qmod, report)
    raise QCompileError(f"no configuration keeps the {result.metric} drop within {max_drop} points "
                        f"(fp32 everywhere is always a candidate: the budget must be >= 0)")


def _packs_int4(spec) -> bool:
    """Whether the target's schedule family stores 4-bit weights two per byte (its packed kernels)."""
    from schedules import relax_passes

    return bool(relax_passes(spec.schedule_family))
