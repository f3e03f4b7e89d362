"""The zoo, end to end: every model (qcompile/zoo.py) built fp32 and int8 for the host and rpi5,
each build verified against the model's own runtime, int8 compared with float on held-out samples
beside onnxruntime's quantize_static int8. Writes benchmarks/results/zoo.md (and zoo.json).

    python benchmarks/zoo.py                       # every model, host and rpi5
    python benchmarks/zoo.py --models ddddocr --targets host
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from qcompile import zoo
from qcompile.api import build
from qcompile.errors import QCompileError
from qcompile.execute import run
from qcompile.frontends import load_model
from qcompile.peer import openvino_int8, ort_quantize
from qcompile.session import load
from qcompile.verification import reference_outputs

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_flags() -> str:
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()) \
        if Path("/proc/cpuinfo").exists() else set()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{platform.machine()} ({' '.join(shown)})"


def sqnr_db(got: np.ndarray, ref: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(np.sum((got.astype(np.float64) - ref) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(max(float(np.sum(ref ** 2)), 1e-30) / noise)


def agreement(outs: list[list[np.ndarray]], refs: list[list[np.ndarray]], spec: zoo.ZooModel | None = None) -> dict:
    """Worst output's SQNR (dB) over held-out samples; for a classifier (`spec.classifies`) the top-1
    agreement of its first output with float; for a model whose wrapper takes decisions at a
    threshold (`spec.decisions`: detections, a face present) how the decisions agree with float's:
    F1 of the positives (1.0 where neither takes any) and how many float takes."""
    n_out = len(refs[0])
    per_output = [sqnr_db(np.concatenate([o[i].ravel() for o in outs]), np.concatenate([r[i].ravel() for r in refs]))
                  for i in range(n_out)]
    result = {"sqnr_db": min(per_output)}
    if spec is not None and spec.classifies:
        a = np.concatenate([o[0].reshape(-1, o[0].shape[-1]).argmax(-1) for o in outs])
        b = np.concatenate([r[0].reshape(-1, r[0].shape[-1]).argmax(-1) for r in refs])
        result["top1"] = float(np.mean(a == b))
    if spec is not None and spec.decisions:
        got = np.concatenate([d.taken(o) for o in outs for d in spec.decisions])
        want = np.concatenate([d.taken(r) for r in refs for d in spec.decisions])
        both, taken = int(np.sum(got & want)), int(got.sum() + want.sum())
        result["decisions_f1"] = 1.0 if taken == 0 else 2 * both / taken
        result["decisions"] = int(want.sum())
    return result


def stream_agreement(name: str, imported, call) -> dict:
    """A streaming model run by `call` over the held-out signal carrying its own state, against the
    model's own runtime carrying its own: the first output's SQNR over the stream and, for a
    probability (a voice activity detector's), how often its decision at 0.5 agrees."""
    frames = zoo.stream_frames(name, imported, seed=1)
    _, ref = zoo.run_stream(name, imported, frames, lambda feed: reference_outputs(imported, feed)[1])
    _, got = zoo.run_stream(name, imported, frames, call)
    a, b = np.stack([o[0] for o in got]).ravel(), np.stack([r[0] for r in ref]).ravel()
    result = {"sqnr_db": sqnr_db(a, b)}
    if b.min() >= 0 and b.max() <= 1:
        result["top1"] = float(np.mean((a > 0.5) == (b > 0.5)))
    return result


def error_line(err: BaseException) -> str:
    if isinstance(err, QCompileError):
        return str(err).splitlines()[0]
    return f"CRASH {type(err).__name__}: {err}".splitlines()[0] + " | " + traceback.format_exc().splitlines()[-3].strip()


def ort_int8(model: Path, imported, calib: list[dict], held: list[dict], workdir: Path) -> dict:
    import onnxruntime as ort

    t0 = time.perf_counter()
    out = ort_quantize(model, workdir / "ort.int8.onnx", [{**feed, **imported.frozen} for feed in calib])
    seconds = time.perf_counter() - t0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    def call(feed):
        return session.run(None, {**feed, **imported.frozen})

    return {"outs": [call(feed) for feed in held], "seconds": seconds, "call": call}


def run_model(name: str, targets: list[str], workdir: Path, n_calib: int, n_held: int) -> dict:
    spec = zoo.ZOO[name]
    row: dict = {"model": name, "task": spec.task, "frontend": spec.frontend, "wheel": spec.wheel}
    path = zoo.fetch(name)
    imported = load_model(path, spec.input_shapes, spec.input_values)
    calib = zoo.samples(name, imported, n_calib, seed=0)
    held = zoo.samples(name, imported, n_held, seed=1)
    runtime, _ = reference_outputs(imported, held[0])
    refs = [reference_outputs(imported, feed)[1] for feed in held]
    row["reference"] = runtime
    host_outs = {}
    for precision in ("fp32", "int8"):
        for target in targets:
            key = f"{precision}/{target}"
            out = workdir / f"{name}.{precision}.{target}.so"
            quantize = {} if precision == "int8" else None
            t0 = time.perf_counter()
            try:
                result = build(path, target, out, input_shapes=spec.input_shapes, input_values=spec.input_values,
                               quantize=quantize, calib=calib)
            except Exception as err:  # noqa: BLE001 - a crash is a finding, recorded as one
                row[key] = {"ok": False, "error": error_line(err), "seconds": time.perf_counter() - t0}
                continue
            verification = result.metadata.get("verification", {})
            entry = {"ok": True, "seconds": time.perf_counter() - t0, "verified": verification.get("verified"),
                     "max_rel_error": max((o["max_rel_error"] for o in verification.get("outputs", [])), default=None)}
            if target == "host":
                outs = [list(run(out, feed).outputs.values()) for feed in held]
                host_outs[precision] = outs
                entry.update(agreement(outs, refs, spec))
                if spec.stream is not None:
                    session = load(out)
                    entry["stream"] = stream_agreement(name, imported, lambda feed: list(session(feed).values()))
            elif precision in host_outs:  # the cross build beside the host build on the first sample
                emulated = list(run(out, held[0]).outputs.values())
                entry["max_abs_vs_host"] = max(float(np.abs(a - b).max()) for a, b in zip(emulated, host_outs[precision][0]))
            row[key] = entry
    if spec.frontend == "onnx":
        try:
            ort = ort_int8(path, imported, calib, held, workdir)
            row["ort_int8"] = {"ok": True, "seconds": ort["seconds"], **agreement(ort["outs"], refs, spec)}
            if spec.stream is not None:
                row["ort_int8"]["stream"] = stream_agreement(name, imported, ort["call"])
        except Exception as err:  # noqa: BLE001
            row["ort_int8"] = {"ok": False, "error": error_line(err)}
    try:
        row["nncf_int8"] = nncf_int8(path, imported, calib, held, spec, refs)
    except Exception as err:  # noqa: BLE001
        row["nncf_int8"] = {"ok": False, "error": error_line(err)}
    return row


def nncf_int8(model: Path, imported, calib: list[dict], held: list[dict], spec: zoo.ZooModel, refs) -> dict:
    """OpenVINO's NNCF int8 (its defaults) on the same calibration samples, measured like qcompile's."""
    frozen = {k: np.asarray(v) for k, v in imported.frozen.items()}
    source = model
    if spec.frontend == "torch":
        import torch

        source = torch.export.load(str(model))
    t0 = time.perf_counter()
    core, _, quantized, named = openvino_int8(source, [{**f, **frozen} for f in calib])
    seconds = time.perf_counter() - t0
    compiled = core.compile_model(quantized, "CPU")
    request = compiled.create_infer_request()
    outs = []
    for feed in held:
        request.infer(named({**feed, **frozen}))
        outs.append([request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))])
    return {"ok": True, "seconds": seconds, **agreement(outs, refs, spec)}


def _cell(entry: dict | None, what: str) -> str:
    if entry is None:
        return "–"
    if not entry.get("ok"):
        return "FAIL"
    value = entry.get(what)
    if value is None:
        return "–"
    if what == "top1":
        return f"{100 * value:.1f}%"
    if what == "sqnr_db":
        return "exact" if value == float("inf") else f"{value:.1f} dB"
    return f"{value:.2g}" if isinstance(value, float) else str(value)


def _task(entry: dict | None) -> str:
    if entry and entry.get("ok") and "decisions_f1" in entry:
        return f"{entry['decisions_f1']:.2f}"
    return _cell(entry, "top1")


def write(rows: list[dict], targets: list[str], seconds: float) -> None:
    lines = ["# The zoo: real models from PyPI wheels, built and verified", "",
             f"Written by `python benchmarks/zoo.py` in {seconds / 60:.0f} min on {cpu_flags()}, 2 cores. "
             "Inputs are made here (qcompile/zoo.py: rendered text lines and pages, matplotlib's photo, "
             "synthesized audio): 8 calibration samples, 8 held-out samples (another seed).", "",
             "Every build is verified by qcompile itself against the model's own runtime before it is written "
             "(fp32 must match within 1e-3 of the output's magnitude). *SQNR* is the worst output's "
             "signal-to-noise ratio against the float reference on the held-out samples. *Task* is how the "
             "int8 build's answers agree with float's: top-1 of a classifier's scores, or for a model whose "
             "wrapper takes decisions at a threshold (a detection, a face present, speech) the F1 of its "
             "positives against float's (1.00 where neither takes any; *float decisions* says how many float "
             "takes over the held-out samples). Peers: onnxruntime's quantize_static (ONNX models) and "
             "OpenVINO's NNCF int8 (every model; its defaults), calibrated on the same samples.", "",
             "| model | frontend | fp32: max rel err | fp32 build s | int8 build s | int8 SQNR: qcompile / ORT / NNCF "
             "| task: qcompile / ORT / NNCF | float decisions | rpi5 fp32 / int8 vs host |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row.get('frontend', '')} | FAIL: {row['error']} |" + " |" * 6)
            continue
        f32, i8 = row.get("fp32/host"), row.get("int8/host")
        int8s = [i8, row.get("ort_int8"), row.get("nncf_int8")]
        rpi = [row.get(f"{p}/rpi5") for p in ("fp32", "int8")] if "rpi5" in targets else []
        rpi_cell = " / ".join("FAIL" if e and not e.get("ok") else
                              f"{e['max_abs_vs_host']:.2g}" if e and "max_abs_vs_host" in e else "–" for e in rpi) or "–"
        lines.append(f"| {row['model']} | {row['frontend']} | {_cell(f32, 'max_rel_error')} | "
                     f"{_cell(f32, 'seconds')} | {_cell(i8, 'seconds')} | "
                     f"{' / '.join(_cell(e, 'sqnr_db') for e in int8s)} | {' / '.join(_task(e) for e in int8s)} | "
                     f"{_cell(f32, 'decisions')} | {rpi_cell} |")
    streams = [(row["model"], key, entry["stream"]) for row in rows for key, entry in row.items()
               if isinstance(entry, dict) and "stream" in entry]
    if streams:
        lines += ["", "## Streams: each build carrying its own state", "",
                  "A streaming model is also run over the whole held-out signal, each call's state fed to the "
                  "next as its own wrapper does, beside its own runtime doing the same (the table's samples "
                  "are frames given the reference's state).", "",
                  "| model | build | first output SQNR | decisions at 0.5 agree |", "|---|---|---|---|"]
        lines += [f"| {model} | {key} | {_cell(dict(ok=True, **st), 'sqnr_db')} | {_cell(dict(ok=True, **st), 'top1')} |"
                  for model, key, st in streams]
    failures = [(row["model"], key, entry["error"]) for row in rows for key, entry in row.items()
                if isinstance(entry, dict) and not entry.get("ok", True)]
    if failures:
        lines += ["", "## Failures (the one line the user sees)", ""]
        lines += [f"- {model} {key}: `{error}`" for model, key, error in failures]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zoo.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "zoo.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.ZOO))
    parser.add_argument("--targets", default="host,rpi5")
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--held", type=int, default=8)
    args = parser.parse_args()
    targets = args.targets.split(",")
    rows, t0 = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qcompile-zoo-") as tmp:
        for name in args.models.split(","):
            print(f"== {name}", flush=True)
            try:
                row = run_model(name, targets, Path(tmp), args.calib, args.held)
            except Exception as err:  # noqa: BLE001
                row = {"model": name, "error": error_line(err)}
            print(json.dumps(row, default=str), flush=True)
            rows.append(row)
    write(rows, targets, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
