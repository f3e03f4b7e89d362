"""Mixed precision: choose int4 / int8 / int4w / fp16 / fp32 per compute layer under a maximum drop of
the top-1 metric, minimising measured latency or bytes, then build the choice.

    sensitivity (quantize/sensitivity.py) -> per-layer cost (measured here) and, for latency, the
    quantize/dequantize cost on each edge between layers -> ILP sweep (quantize/search.py) ->
    candidates checked in simulation, cheapest first -> built, their real metric checked against
    the budget; for latency the first few within budget (and uniform int8, when it is within) are
    timed as whole models and the fastest wins, since per-layer sums only predict

The choice is written as JSON ({"precisions": {layer: precision}, ...}) that `--precision-config`
reads back to rebuild without searching."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..backends import backend_for, host_engine
from ..builder import compile_module
from ..errors import QCompileError
from ..quantize import QuantConfig, quantize_and_simulate
from ..quantize.annotate import annotate, plan
from ..quantize.calib_data import load_calibration, read_npy
from ..quantize.calibrate import choose_qparams, collect
from ..quantize.search import candidates, group_tables, layer_groups, predicted
from ..quantize.sensitivity import (
    Simulator,
    as_tensors,
    compute_layers,
    layer_sensitivity,
    output_noise,
    run_batches,
    top1_metric,
)
from .cache import Cache, cache_key
from .config import OBJECTIVES, MixedResult
from .latency import boundary_costs, measure_conversions, measure_layer_latency

BYTES_PER_WEIGHT = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}


def bytes_per_weight(precision: str, group_size: int) -> float:
    if precision == "int4w":  # half a byte, and a float32 scale per group
        return 0.5 + (4.0 / group_size if group_size else 0.0)
    return BYTES_PER_WEIGHT[precision]


def search(prepared, calib, *, labels=None, max_drop: float = 0.5, objective: str = "latency", base=None,
           cache_dir=None, progress: bool = True, steps: int = 16, timed_candidates: int = 3,
           rpc=None) -> tuple[MixedResult, object]:
    """(result, quantized module of the chosen configuration). `prepared`: builder.prepare(...)
    without quantization; `calib`: calibration data (also the data the metric is measured on);
    `labels`: one class per calibration sample (else top-1 agreement with the float model);
    `timed_candidates`: for latency, how many candidates within budget are built and timed whole;
    `rpc` (tuning.RPC): measure latencies on a device at a TVM RPC tracker instead of this machine."""
    import tvm
    from tvm import relax

    if objective not in OBJECTIVES:
        raise QCompileError(f"unknown objective '{objective}'; choose from {', '.join(OBJECTIVES)}")
    if not max_drop >= 0:
        raise QCompileError(f"--max-accuracy-drop must be a number of points >= 0, not {max_drop}")
    if labels is not None:
        labels = np.asarray(read_npy(labels, "--labels") if isinstance(labels, (str, Path)) else labels).reshape(-1)
        if labels.dtype.kind not in "iu":
            raise QCompileError(f"--labels: class indices must be integers, not {labels.dtype}")
    spec, imported, mod = prepared.spec, prepared.imported, prepared.float_mod
    backend = backend_for(spec)
    device = None
    if objective == "latency":
        if not backend.times_models:
            raise QCompileError(f"--objective latency times whole models; {backend.kind} target '{spec.name}' cannot "
                                "be timed by qcompile: use --objective size")
        device = backend.device(rpc)
    base = dataclasses.replace(base or QuantConfig(), mode="static", precisions={})
    names = [t.name for t in imported.inputs]
    batches = load_calibration(calib, imported.inputs)
    if labels is not None:
        samples = sum(len(b[names[0]]) for b in batches)
        if len(labels) != samples:
            raise QCompileError(f"--labels: {len(labels)} labels for {samples} calibration samples")
    cache = Cache(cache_dir, cache_key(imported.source, spec, batches, labels, base))

    p = plan(mod, imported.layer_names)
    observers = collect(annotate(mod, planned=p), batches, names, host_engine, progress)
    qparams = choose_qparams(observers, base.method, base.percentile, base.symmetric)
    layers = compute_layers(mod, p)
    if not layers:
        raise QCompileError(f"{imported.source}: no convolution or matmul with constant weights to choose a precision for")
    sim = Simulator(mod, p, qparams, layers, batches, names, host_engine, base.per_channel, base.group_size)
    float_metric = top1_metric(sim.reference, sim.reference, labels)
    sens = cache.get("sensitivity", lambda: layer_sensitivity(sim, labels, progress))

    allowed = {l.name: tuple(q for q in l.allowed() if q in backend.precisions) for l in layers}
    nodes = {n.name: n for n in p.nodes}
    edges = []
    if objective == "size":
        cost = {l.name: {q: l.weight.size * bytes_per_weight(q, base.group_size) for q in allowed[l.name]}
                for l in layers}
    else:
        def latencies():
            from tqdm import tqdm

            table = {}
            jobs = [(l, q) for l in layers for q in allowed[l.name]]
            for l, q in tqdm(jobs, desc="layer latency", unit="kernel", disable=not progress):
                table.setdefault(l.name, {})[q] = measure_layer_latency(mod, nodes[l.name], q, spec, base, device, host_engine)
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
        qmod, report, simulated = quantize_and_simulate(mod, imported.inputs, batches, config, imported.layer_names,
                                                        engine=host_engine)
        executable = compile_module(qmod, spec) if objective == "latency" else None
        local = executable is not None and rpc is None  # latency here: the target runs on this machine
        vm = relax.VirtualMachine(executable, tvm.cpu()) if local else host_engine(qmod)
        drop = float_metric - top1_metric(run_batches(vm, as_tensors(batches, names)), sim.reference, labels)
        checked = {"precisions": cand["precisions"], "real_drop": drop, "accepted": False}
        result.checked.append(checked)
        if drop > max_drop:
            continue
        within.append((checked, qmod, report, simulated))
        if objective == "size":
            break
        checked["latency_us"] = device.model_us(executable, [np.asarray(batches[0][n]) for n in names])
        timed += not baseline
    if within:
        checked, qmod, report, simulated = min(within, key=lambda w: w[0].get("latency_us", 0.0))  # size: the first
        checked["accepted"] = True
        result.precisions = checked["precisions"]
        result.layers = [{"name": l.name, "op": l.op, "group": group_of[l.name], "sensitivity": sens[l.name],
                          objective: cost[l.name], "precision": result.precisions[l.name]} for l in layers]
        return result, (qmod, report, simulated)
    raise QCompileError(f"no configuration keeps the {result.metric} drop within {max_drop} points "
                        f"(fp32 everywhere is always a candidate: the budget must be >= 0)")
