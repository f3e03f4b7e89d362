"""Transformers: accuracy, weight bytes and latency of every quantizer on the project's two
transformers, in one process. Writes benchmarks/results/transformers.md and transformers.json.

    python benchmarks/transformers.py                    # both models, batch 1 and 8
    python benchmarks/transformers.py --tasks vit --rounds 3

Models: the Fashion-MNIST ViT (top-1 on the first 1000 test images) and the character-level language
model (perplexity and next-character accuracy on 512 windows of held-out standard-library modules),
both trained here (models/). Every quantizer gets the same calibration samples (training data).

Builds: onnxruntime fp32, int8 quantize_static (QDQ, per-channel, symmetric int8), int8
quantize_dynamic, int4 MatMulNBits (block sizes 32/64/128, symmetric); OpenVINO fp32, NNCF int8
(quantize) and NNCF int4 compress_weights (INT4_SYM, groups of 32 and 128, every matmul); qcompile
fp32, int8 static, int8 static + SmoothQuant 0.5, int8 dynamic, int8 weight-only, and int4
block-wise weight-only (groups of 32/64/128). The metric is measured at batch 8; latency at batch 1
and 8 in interleaved rounds (a median of --repeat calls per runtime per round), with each runtime's
latency divided by onnxruntime fp32's within the round and the median over rounds reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from peers import PAUSE_S, _cpu_name, _ort_session, _version  # noqa: E402
from zoo import cpu_flags  # noqa: E402

import qcompile  # noqa: E402
from qcompile.examples import (  # noqa: E402
    char_lm_onnx,
    char_windows,
    fashion_mnist,
    fashion_mnist_vit_onnx,
    lm_metrics,
    python_source_text,
)
from qcompile.peer import ort_quantize  # noqa: E402
from qcompile.threads import physical_cores, use_physical_cores  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / "work" / "transformers"
EVAL_BATCH = 8


@dataclass
class Task:
    name: str
    onnx: Path
    input_name: str
    shape: tuple  # one sample's shape
    dtype: str
    calib: np.ndarray  # [n, *shape] calibration samples
    eval_x: np.ndarray
    eval_y: np.ndarray
    metric_names: tuple

    def metric(self, outputs: np.ndarray) -> dict:
        raise NotImplementedError


class VitTask(Task):
    def metric(self, outputs):
        return {"top-1 %": float((outputs.argmax(1) == self.eval_y).mean() * 100)}


class LmTask(Task):
    def metric(self, outputs):
        m = lm_metrics(outputs, self.eval_y)
        return {"perplexity": m["perplexity"], "next-char %": m["accuracy"]}


def vit_task() -> Task:
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    return VitTask("vit", fashion_mnist_vit_onnx(), "image", (1, 28, 28), "float32", x_train[:64], x_test[:1000],
                   y_test[:1000], ("top-1 %",))


def lm_task() -> Task:
    calib = char_windows(python_source_text("train"), 64, seed=12345)[:, :-1]
    held = char_windows(python_source_text("test"), 512)
    return LmTask("char-lm", char_lm_onnx(), "tokens", (held.shape[1] - 1,), "int64", calib, held[:, :-1],
                  held[:, 1:], ("perplexity", "next-char %"))


TASKS = {"vit": vit_task, "char-lm": lm_task}


# ---- builds: each a function of a batch size returning a call(x) -> first output -------------------

@dataclass
class Build:
    name: str
    family: str  # onnxruntime | openvino | qcompile
    make: object  # batch -> call(x: np.ndarray) -> np.ndarray
    weight_bytes: int = 0
    seconds: float = 0.0
    note: str = ""


def _onnx_weight_bytes(path: Path) -> int:
    import onnx

    model = onnx.load(str(path))
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def _ort_build(name: str, path: Path, task: Task, seconds: float = 0.0) -> Build:
    session = _ort_session(path)

    def make(_batch):
        return lambda x: session.run(None, {task.input_name: x})[0]
    return Build(name, "onnxruntime", make, _onnx_weight_bytes(path), seconds)


def onnxruntime_builds(task: Task) -> list[Build]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from onnxruntime.quantization.shape_inference import quant_pre_process

    builds = [_ort_build("onnxruntime fp32", task.onnx, task)]
    pre = WORK / f"{task.name}.pre.onnx"
    quant_pre_process(str(task.onnx), str(pre), skip_symbolic_shape=True)

    out = WORK / f"{task.name}.ort-static.onnx"
    t0 = time.perf_counter()
    ort_quantize(task.onnx, out, task.calib, task.input_name, batch=EVAL_BATCH)
    builds.append(_ort_build("onnxruntime int8 static", out, task, time.perf_counter() - t0))
    out = WORK / f"{task.name}.ort-dynamic.onnx"
    t0 = time.perf_counter()
    quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
    builds.append(_ort_build("onnxruntime int8 dynamic", out, task, time.perf_counter() - t0))
    import onnx

    for block in (32, 64, 128):
        out = WORK / f"{task.name}.ort-int4-g{block}.onnx"
        t0 = time.perf_counter()
        quantizer = MatMulNBitsQuantizer(onnx.load(str(pre)), bits=4, block_size=block, is_symmetric=True)
        quantizer.process()
        quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
        builds.append(_ort_build(f"onnxruntime int4 MatMulNBits g{block}", out, task, time.perf_counter() - t0))
    return builds


def _ov_weight_bytes(model) -> int:
    return sum(op.get_byte_size() for op in model.get_ordered_ops() if op.get_type_name() == "Constant")


def openvino_builds(task: Task) -> list[Build]:
    import nncf
    import openvino as ov

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": physical_cores()}

    def build(name: str, model, seconds: float = 0.0) -> Build:
        def make(batch):
            m = model.clone()
            m.reshape({m.inputs[0].get_any_name(): [batch, *task.shape]})
            request = core.compile_model(m, "CPU", config).create_infer_request()

            def call(x):
                request.infer({0: x})
                return request.get_output_tensor(0).data.copy()
            return call
        return Build(name, "openvino", make, _ov_weight_bytes(model), seconds)

    model = core.read_model(str(task.onnx))
    builds = [build("openvino fp32", model)]
    calib = nncf.Dataset([task.calib[i:i + 1] for i in range(len(task.calib))])
    fixed = model.clone()
    fixed.reshape({fixed.inputs[0].get_any_name(): [1, *task.shape]})
    t0 = time.perf_counter()
    quantized = nncf.quantize(fixed, calib, subset_size=len(task.calib), model_type=nncf.ModelType.TRANSFORMER)
    builds.append(build("openvino int8 (nncf quantize)", quantized, time.perf_counter() - t0))
    for group in (32, 128):
        t0 = time.perf_counter()
        # ADJUST: a group longer than a layer's K becomes the largest that divides it (as qcompile's one group over K)
        compressed = nncf.compress_weights(model.clone(), mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group,
                                           ratio=1.0, all_layers=True, advanced_parameters=nncf.AdvancedCompressionParameters(
                                               group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST))
        builds.append(build(f"openvino int4 (nncf compress_weights) g{group}", compressed, time.perf_counter() - t0))
    return builds


QCOMPILE_VARIANTS = [
    ("qcompile fp32", None),
    ("qcompile int8 static", {}),
    ("qcompile int8 static + SmoothQuant 0.5", {"smooth_quant": 0.5}),
    ("qcompile int8 dynamic", {"mode": "dynamic"}),
    ("qcompile int8 weight-only", {"mode": "weight-only"}),
    ("qcompile int4 block-wise g32", {"mode": "weight-only", "weight_bits": 4, "group_size": 32}),
    ("qcompile int4 block-wise g64", {"mode": "weight-only", "weight_bits": 4, "group_size": 64}),
    ("qcompile int4 block-wise g128", {"mode": "weight-only", "weight_bits": 4, "group_size": 128}),
]


def qcompile_builds(task: Task) -> list[Build]:
    builds = []
    for name, quantize in QCOMPILE_VARIANTS:
        cache: dict = {}

        def make(batch, name=name, quantize=quantize, cache=cache):
            out = WORK / f"{task.name}-{name.replace(' ', '_').replace('+', '')}-b{batch}.so"
            t0 = time.perf_counter()
            calib = [{task.input_name: task.calib[i:i + batch]} for i in range(0, len(task.calib), batch)][:8]
            result = qcompile.build(task.onnx, "host", out, input_shapes={task.input_name: [batch, *task.shape]},
                                    quantize=None if quantize is None else {**quantize, "progress": False},
                                    calib=calib if quantize is not None else None)
            cache[batch] = (time.perf_counter() - t0, result)
            session = qcompile.load(out)
            return lambda x: next(iter(session({task.input_name: x}).values()))

        builds.append(Build(name, "qcompile", make))
        builds[-1].cache = cache
    return builds


# ---- measuring ----------------------------------------------------------------------------------

def evaluate(task: Task, call) -> dict:
    n = len(task.eval_x) // EVAL_BATCH * EVAL_BATCH
    outs = np.concatenate([call(np.ascontiguousarray(task.eval_x[i:i + EVAL_BATCH])) for i in range(0, n, EVAL_BATCH)])
    saved_y = task.eval_y
    task.eval_y = saved_y[:n]
    try:
        return task.metric(outs)
    finally:
        task.eval_y = saved_y


def time_rounds(calls: dict, x: np.ndarray, rounds: int, repeat: int) -> dict:
    """name -> per-round ratio to onnxruntime fp32 and the median ms."""
    for call in calls.values():
        call(x)
    ms: dict = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            time.sleep(PAUSE_S)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                call(x)
                times.append((time.perf_counter() - t0) * 1e3)
            ms[name].append(statistics.median(times))
    base = ms["onnxruntime fp32"]
    return {name: {"ms": statistics.median(v), "ratio": statistics.median([a / b for a, b in zip(v, base)])}
            for name, v in ms.items()}


def run_task(task: Task, batches: list[int], rounds: int, repeat: int) -> dict:
    builds: list[Build] = []
    errors = {}
    for label, fn in (("onnxruntime", onnxruntime_builds), ("openvino", openvino_builds), ("qcompile", qcompile_builds)):
        try:
            builds.extend(fn(task))
        except Exception as err:  # noqa: BLE001 - a peer that cannot run this model is a finding
            errors[label] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            traceback.print_exc()
    rows = {b.name: {"family": b.family, "weight_bytes": b.weight_bytes, "build_s": b.seconds} for b in builds}
    calls_by_batch = {}
    for batch in sorted(set(batches) | {EVAL_BATCH}):
        calls = {}
        for b in builds:
            try:
                calls[b.name] = b.make(batch)
            except Exception as err:  # noqa: BLE001
                rows[b.name].setdefault("errors", {})[batch] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                traceback.print_exc()
                continue
            if b.family == "qcompile":
                seconds, result = b.cache[batch]
                rows[b.name]["build_s"] = seconds
                rows[b.name]["weight_bytes"] = result.metadata.get("weight_bytes", 0)
                rows[b.name]["build_split"] = {k: round(v, 1) for k, v in result.seconds.items()}
        calls_by_batch[batch] = calls
        print(f"{task.name}: built batch {batch}", flush=True)
    for name, call in calls_by_batch[EVAL_BATCH].items():
        rows[name]["metric"] = evaluate(task, call)
        print(f"{task.name}: {name}: {rows[name]['metric']}", flush=True)
    for batch in batches:
        x = np.ascontiguousarray(task.eval_x[:batch])
        for name, timing in time_rounds(calls_by_batch[batch], x, rounds, repeat).items():
            rows[name][f"b{batch}"] = timing
    return {"task": task.name, "rows": rows, "errors": errors, "metric_names": list(task.metric_names)}


# ---- writing ------------------------------------------------------------------------------------

def _fmt_metric(row: dict, names) -> list[str]:
    m = row.get("metric") or {}
    return [f"{m[n]:.2f}" if n in m else "-" for n in names]


def write(results: list[dict], args, seconds: float) -> None:
    lines = ["# Transformers: qcompile against onnxruntime and OpenVINO/NNCF", "",
             (f"Written by `python benchmarks/transformers.py {' '.join(sys.argv[1:])}`".rstrip() + f" in {seconds / 60:.0f} min."
              if seconds else "Rewritten by `--from-json` from the JSON of a `python benchmarks/transformers.py` run."),
             f"Machine: {_cpu_name()}, {physical_cores()} physical cores, flags {cpu_flags()}. onnxruntime "
             f"{_version('onnxruntime')}, openvino {_version('openvino')}, nncf {_version('nncf')}, "
             f"qcompile at {_git_head()}.",
             f"Latency: median ms of {args.repeat} calls per runtime per round, {args.rounds} interleaved rounds; "
             "`x ort` is the latency divided by onnxruntime fp32's in the same round (median over rounds): "
             "below 1 is faster.", ""]
    for res in results:
        names = res["metric_names"]
        rows = res["rows"]
        float_row = rows.get("onnxruntime fp32", {})
        float_bytes = float_row.get("weight_bytes") or 1
        lines += [f"## {res['task']}", "",
                  "| build | " + " | ".join(names) + " | weight bytes (% of fp32) | build s | "
                  + " | ".join(f"b{b} ms | b{b} x ort" for b in args.batch_list) + " |",
                  "|---|" + "---|" * (len(names) + 2 + 2 * len(args.batch_list))]
        for name, row in rows.items():
            timing = []
            for b in args.batch_list:
                t = row.get(f"b{b}")
                timing += [f"{t['ms']:.2f}", f"{t['ratio']:.2f}"] if t else ["-", "-"]
            wb = row.get("weight_bytes") or 0
            lines.append(f"| {name} | " + " | ".join(_fmt_metric(row, names))
                         + f" | {wb / 1e3:.0f} kB ({wb / float_bytes * 100:.0f}%) | {row.get('build_s', 0):.1f} | "
                         + " | ".join(timing) + " |")
        if res["errors"]:
            lines += ["", "Errors: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())]
        lines += ["", *goals(res), ""]
    (RESULTS / "transformers.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "transformers.json").write_text(json.dumps(results, indent=1, default=str))


def goals(res: dict) -> list[str]:
    """The issue's goals, checked against this run's numbers: int8 within 0.5 point of top-1 (2% of
    perplexity) and never worse than onnxruntime's int8; int4 block-wise at <= 30% of the float
    weight bytes within 1 point (5%)."""
    rows = res["rows"]
    name = res["metric_names"][0]
    perplexity = name == "perplexity"

    def change(build):  # against float: points of top-1, or the relative change of perplexity
        m = (rows.get(build, {}).get("metric") or {}).get(name)
        f = (rows.get("onnxruntime fp32", {}).get("metric") or {}).get(name)
        return None if m is None or f is None else (m / f - 1 if perplexity else m - f)

    def ok(delta, goal):
        return delta is not None and (delta <= goal if perplexity else delta >= -goal)

    def show(delta):
        return "-" if delta is None else f"{delta * 100:+.2f}%" if perplexity else f"{delta:+.2f} points"

    def better_or_equal(a, b):
        return a is not None and b is not None and (a <= b + 1e-9 if perplexity else a >= b - 1e-9)

    int8_goal, int4_goal = (0.02, 0.05) if perplexity else (0.5, 1.0)
    out = [f"Goals ({name} against float's, {'lower' if perplexity else 'higher'} is better):"]
    q8 = change("qcompile int8 static")
    unit = "%" if perplexity else " points"
    out.append(f"- int8 static within {int8_goal * (100 if perplexity else 1):g}{unit}: {show(q8)} "
               f"({'met' if ok(q8, int8_goal) else 'MISSED'})")
    for peer in ("onnxruntime int8 static", "onnxruntime int8 dynamic"):
        p8 = change(peer)
        out.append(f"- against {peer} ({show(p8)}): "
                   + ("not worse" if better_or_equal(q8, p8) else f"worse by {show(abs(q8 - p8) if p8 is not None and q8 is not None else None).lstrip('+')}"))
    float_bytes = rows.get("onnxruntime fp32", {}).get("weight_bytes") or 1
    for g in (32, 64, 128):
        build = f"qcompile int4 block-wise g{g}"
        if build not in rows:
            continue
        share = (rows[build].get("weight_bytes") or 0) / float_bytes
        delta = change(build)
        out.append(f"- int4 g{g} within {int4_goal * (100 if perplexity else 1):g}{unit} at <= 30% of the float "
                   f"bytes: {show(delta)} at {share * 100:.0f}% ({'met' if ok(delta, int4_goal) and share <= 0.30 else 'MISSED'})")
    return out


def _git_head() -> str:
    import subprocess

    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--from-json", action="store_true", help="rewrite transformers.md from the last run's JSON")
    args = parser.parse_args()
    args.batch_list = [int(b) for b in args.batches.split(",")]
    if args.from_json:
        results = json.loads((RESULTS / "transformers.json").read_text())
        write(results, args, 0.0)
        print((RESULTS / "transformers.md").read_text())
        return
    use_physical_cores()
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = [run_task(TASKS[name](), args.batch_list, args.rounds, args.repeat) for name in args.tasks.split(",")]
    write(results, args, time.perf_counter() - start)
    print((RESULTS / "transformers.md").read_text())


if __name__ == "__main__":
    main()
