"""Verify a build before it is handed over: the compiled model runs on sample inputs beside the
model's own reference runtime (onnxruntime for ONNX, the TFLite interpreter for TFLite, torch for
.pt2). A float build must match it; a quantized build's agreement with it is measured and recorded."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .errors import QCompileError
from .timing import stage

FLOAT_TOLERANCE = 1e-3  # max |difference| relative to the reference output's largest magnitude (at least 1)
# An integer build may lose this much more SQNR against the reference than its own float simulation
# does. Realized and simulated rounding differ by a step here and there, and deep networks amplify
# it (measured: within 2 dB either way on the zoo); a wrong kernel or scale loses tens of dB.
SIMULATION_MARGIN_DB = 6.0
# A quantized build is measured on this many samples, its SQNR pooled over them: on one sample a
# small output is a coin toss (face landmark's face-presence logit: -0.99 from TFLite, -0.85
# simulated, -0.14 in integers, 1.4 dB against the simulation's 17 dB; over 8 samples the integer
# build is 21.1 dB and its simulation 21.9 dB). A float build is checked element by element on one.
QUANTIZED_SAMPLES = 8


def _samples_in(arrays) -> int:
    """The samples in one batch: its first input's leading dimension (1 for a scalar or no input)."""
    first = next(iter(arrays), None)
    return len(first) if first is not None and np.ndim(first) else 1


def sample_batches(imported, calib=None, samples: int = 1) -> list[dict[str, np.ndarray]]:
    """Calibration batches until `samples` samples, else seeded batches (one per sample, at most 4)."""
    if calib is None:
        return [sample_inputs(imported, seed=seed) for seed in range(min(samples, 4))]
    from .quantize.calib_data import load_calibration

    batches, count = [], 0
    for batch in load_calibration(calib, imported.inputs):
        batches.append({k: np.ascontiguousarray(v) for k, v in batch.items()})
        count += _samples_in(batch.values())
        if count >= samples:
            break
    return batches


def sample_inputs(imported, calib=None, seed: int = 0) -> dict[str, np.ndarray]:
    """The first calibration batch, else seeded inputs: standard normal floats, small integers."""
    if calib is not None:
        return sample_batches(imported, calib)[0]
    rng = np.random.default_rng(seed)
    arrays = {}
    for t in imported.inputs:
        if np.dtype(t.dtype).kind == "f":
            arrays[t.name] = rng.standard_normal(t.shape).astype(t.dtype)
        elif t.dtype == "bool":
            arrays[t.name] = rng.integers(0, 2, t.shape).astype(bool)
        else:
            arrays[t.name] = rng.integers(0, 2, t.shape).astype(t.dtype)
    return arrays


@functools.lru_cache(maxsize=4)
def _ort_session(source: str, _mtime_ns: int, _size: int):
    """One onnxruntime session per model file (and version of it): a stream of calls, or a build's
    samples, would otherwise load the model once a call."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def reference_outputs(imported, inputs: dict[str, np.ndarray]) -> tuple[str, list[np.ndarray]] | tuple[str, None]:
    """(runtime name, its outputs in the model's order), or (why there is none, None)."""
    source = Path(imported.source)
    if imported.format == "onnx":
        stat = source.stat()
        return "onnxruntime", _ort_session(str(source), stat.st_mtime_ns, stat.st_size).run(None, {**inputs, **imported.frozen})
    if imported.format == "tflite":
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            return "no TFLite interpreter here (pip install 'qcompile[tflite]')", None
        interpreter = Interpreter(model_path=str(source))
        interpreter.allocate_tensors()
        details = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        for name, array in inputs.items():
            interpreter.set_tensor(details[name], array)
        interpreter.invoke()
        return "TFLite interpreter", [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    if imported.format == "torch.export":
        import torch

        from .frontends.pt2_safe import load_program

        with torch.no_grad():
            out = load_program(source).module()(*[torch.from_numpy(inputs[t.name]) for t in imported.inputs])
        outs = out if isinstance(out, (tuple, list)) else [out]
        return "torch", [o.detach().numpy() for o in outs]
    return f"no reference runtime for {imported.format}", None


def check_shapes(imported, got: list[np.ndarray], ref: list[np.ndarray], runtime: str) -> None:
    for info, a, b in zip(imported.outputs, got, ref):
        if np.shape(a) != np.shape(b):
            raise QCompileError(f"verification: output '{info.name}' has shape {list(np.shape(a))}, {runtime} gives "
                                f"{list(np.shape(b))}")


def _pooled(batches: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each output over all batches, stacked along a new leading axis."""
    return [np.stack([np.asarray(outputs[i]) for outputs in batches]) for i in range(len(batches[0]))]


def _sqnr_db(got: np.ndarray, ref: np.ndarray) -> float:
    noise = float(np.sum((got.astype(np.float64) - ref) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(max(signal, 1e-30) / noise)


def compare(imported, got: list[np.ndarray], ref: list[np.ndarray], quantized: bool, runtime: str) -> dict:
    """Per output: max |difference| relative to the reference's magnitude, SQNR, top-1 agreement.
    A float build beyond FLOAT_TOLERANCE raises, naming the first output that diverges."""
    check_shapes(imported, got, ref, runtime)
    rows = []
    for info, a, b in zip(imported.outputs, got, ref):
        a, b = np.asarray(a), np.asarray(b)
        b64 = b.astype(np.float64)
        rel = float(np.abs(a.astype(np.float64) - b64).max() / max(1.0, np.abs(b64).max())) if a.size else 0.0
        row = {"output": info.name, "max_rel_error": rel, "sqnr_db": _sqnr_db(a, b64)}
        if a.ndim >= 2 and a.shape[-1] > 1:
            row["top1_agreement"] = float(np.mean(a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)))
        if not np.isfinite(a).all():
            raise QCompileError(f"verification: output '{info.name}' holds NaN or infinity where {runtime} does not")
        if not quantized and rel > FLOAT_TOLERANCE:
            raise QCompileError(f"verification: output '{info.name}' differs from {runtime} by {rel:.3g} of its "
                                f"magnitude (tolerance {FLOAT_TOLERANCE}); the build is refused (--no-verify "
                                "skips this check)")
        rows.append(row)
    return {"reference": runtime, "outputs": rows}


def start_simulation(prepared):
    """The fake-quantized float module a static (integer) build was realized from, its code
    generated on a thread of its own while the build compiles the artifact (a Background of its
    engine, backends.host_engine_beside), or None where there is none."""
    from .backends import host_engine_beside

    if prepared.quant_report is None or getattr(prepared, "simulated", None) is None:
        return None
    return host_engine_beside(prepared.simulated)


def simulation_outputs(simulation, batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The simulation (start_simulation's) run here on each batch, once its compile is done."""
    import tvm

    with stage("calibration/simulation compiles"):  # the wait for what the other thread has not done yet
        main = simulation.result()["main"]
    outputs = []
    for arrays in batches:
        result = main(*[tvm.runtime.tensor(a) for a in arrays])
        outputs.append([result[i].numpy() for i in range(len(result))] if not hasattr(result, "numpy") else [result.numpy()])
    return outputs


def check_against_simulation(imported, rows: list[dict], got, simulated, ref, runtime: str) -> None:
    """Each output's SQNR against the reference beside its simulation's; refuses an integer build
    that loses SIMULATION_MARGIN_DB more than the simulation does."""
    for info, row, a, s, b in zip(imported.outputs, rows, got, simulated, ref):
        b64 = np.asarray(b, np.float64)
        row["simulation_sqnr_db"] = _sqnr_db(np.asarray(s), b64)
        row["sqnr_vs_simulation_db"] = _sqnr_db(np.asarray(a), np.asarray(s, np.float64))
        if row["sqnr_db"] < row["simulation_sqnr_db"] - SIMULATION_MARGIN_DB:
            raise QCompileError(f"verification: output '{info.name}' of the integer build is {row['sqnr_db']:.1f} dB "
                                f"from {runtime}, its float simulation {row['simulation_sqnr_db']:.1f} dB: the integer "
                                "kernels lose more than quantization does; the build is refused (--no-verify skips "
                                "this check)")


def verify(prepared, backend, compiled, metadata: dict, calib=None, simulation=None) -> dict:
    """What was verified, for the artifact's metadata and the report: the compiled model beside the
    reference runtime on sample inputs, or why it could not run here. `simulation`: the one
    start_simulation began, if the caller started it early."""
    imported = prepared.imported
    quantized = prepared.quant_report is not None
    batches = sample_batches(imported, calib, QUANTIZED_SAMPLES if quantized else 1)
    refs = []
    for inputs in batches:
        runtime, ref = reference_outputs(imported, inputs)
        if ref is None:
            return {"verified": False, "why": runtime}
        refs.append(ref)
    arrays = [[inputs[t.name] for t in imported.inputs] for inputs in batches]
    got, why = backend.run_compiled(compiled, arrays, metadata)
    if got is None:
        return {"verified": False, "why": why}
    for outputs, ref in zip(got, refs):
        check_shapes(imported, outputs, ref, runtime)
    got, refs = _pooled(got), _pooled(refs)
    result = {"verified": True, "quantized": quantized, "samples": int(sum(_samples_in(a) for a in arrays)),
              **compare(imported, got, refs, quantized, runtime)}
    simulation = simulation or start_simulation(prepared)
    if simulation is not None:
        simulated = _pooled(simulation_outputs(simulation, arrays))
        check_against_simulation(imported, result["outputs"], got, simulated, refs, runtime)
        result["against_simulation"] = True
    return result
