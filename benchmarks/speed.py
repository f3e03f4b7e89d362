"""Speed: qcompile against onnxruntime on the same CPU, in one run. Writes
benchmarks/results/speed.md and benchmarks/results/tuning_curve.png.

    python benchmarks/speed.py [--trials 16] [--en-trials 8] [--repeat 200] [--quick]

Models: the Fashion-MNIST CNN (models/fashion_mnist) and EfficientNet-Lite0 (ImageNet weights),
batch 1 and 8. Rows: onnxruntime fp32, onnxruntime int8 (QDQ from quantize_static: per-channel
int8 weights, int8 activations), qcompile fp32 and int8 untuned (default schedules), qcompile fp32
and int8 tuned, and, on a machine with AVX-512/VNNI, the int8 build for the AVX2-only target (exact
vpmaddwd kernels) untuned and tuned (MetaSchedule; trials per kernel and tuning time stated). Medians over `repeat`
runs, and ratios to onnxruntime int8 (> 1: faster than onnxruntime int8).
The tuning curve: the Fashion-MNIST int8 model tuned in steps (records resume between steps),
built and timed after each: model latency against trials.

Tuning records are kept in benchmarks/records/ (ignored by git): a rerun resumes them."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets as D  # noqa: E402
from float_baseline import median_ms  # noqa: E402

import qcompile  # noqa: E402
from qcompile.backends.cpu.run import load_library  # noqa: E402
from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx  # noqa: E402
from qcompile.peer import ort_quantize  # noqa: E402
from qcompile.targets import detect_host  # noqa: E402
from qcompile.tuning import tune  # noqa: E402

RESULTS = HERE / "results"
RECORDS = HERE / "records"
WORK = HERE / "work"


class Model:
    def __init__(self, name: str, path: Path, shape: tuple, calib: np.ndarray, sample: np.ndarray):
        self.name, self.path, self.shape, self.calib, self.sample = name, path, shape, calib, sample

    def calib_file(self, batch: int) -> Path:
        path = WORK / f"{self.name}-calib-b{batch}.npz"
        n = len(self.calib) // batch * batch
        np.savez(path, image=self.calib[:n])  # the calibration loader splits it into batches of `batch`
        return path


def _qcompile_ms(artifact: Path, x: np.ndarray, repeat: int) -> float:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(load_library(artifact), tvm.cpu())
    arg = tvm.runtime.tensor(x)
    return median_ms(lambda: vm["main"](arg), repeat)


def _ort_ms(path: Path, x: np.ndarray, repeat: int) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return median_ms(lambda: session.run(None, {"image": x}), repeat)


def bench(model: Model, batch: int, trials: int, repeat: int, curve: list | None, avx2_too: bool) -> list[dict]:
    x = np.ascontiguousarray(np.repeat(model.sample, batch, axis=0)[:batch])
    shapes = {"image": [batch, *model.shape]}
    calib = model.calib_file(batch)
    int8 = {"progress": False}
    rows = [{"name": "onnxruntime fp32", "ms": _ort_ms(model.path, x, repeat)}]
    qdq = ort_quantize(model.path, WORK / f"{model.name}-ort-int8.onnx", model.calib, "image", "percentile", 1)
    rows.append({"name": "onnxruntime int8 (QDQ)", "ms": _ort_ms(qdq, x, repeat)})
    variants = [("fp32", "host", None), ("int8", "host", int8)]
    if avx2_too:  # this machine has AVX-512/VNNI; the AVX2-only build is what most x86 CPUs get
        variants.append(("int8 x86-avx2 build", "x86-avx2", int8))
    for label, target, quantize in variants:
        kw = {"input_shapes": shapes, "quantize": quantize, "calib": calib if quantize else None}
        slug = label.replace(" ", "-")
        art = qcompile.build(model.path, target, WORK / f"{model.name}-b{batch}-{slug}.so", **kw).artifact
        rows.append({"name": f"qcompile {label} untuned", "ms": _qcompile_ms(art, x, repeat)})
        if trials == 0:
            continue
        records = RECORDS / f"{model.name}-b{batch}-{slug}"
        steps = [2, 4, 8, 16, 32, 64] if (curve is not None and label == "int8") else []
        steps = [s for s in steps if s < trials] + [trials]
        tuned_s = 0.0
        for step in steps:
            result = tune(model.path, target, records, step, progress=False, **kw)
            tuned_s += result.seconds
            tuned = qcompile.build(model.path, target, WORK / f"{model.name}-b{batch}-{slug}-t.so", records=records, **kw)
            ms = _qcompile_ms(tuned.artifact, x, repeat)
            total = sum(t.trials for t in result.tasks)
            if curve is not None and label == "int8":
                curve.append((total, ms, tuned_s))
        bad = [t.name for t in result.tasks if t.verified is False]
        rows.append({"name": f"qcompile {label} tuned", "ms": ms,
                     "note": f"{trials} trials/kernel, {len(result.tasks)} kernels, {total} trials, "
                             f"tuned {tuned_s / 60:.1f} min this run" + (f"; rejected: {bad}" if bad else "")})
    ref = rows[1]["ms"]
    for row in rows:
        row["ratio"] = ref / row["ms"]
    return rows


def plot_curve(curve: list, path: Path, ort_int8_ms: float, untuned_ms: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "o-", label="qcompile int8, tuned")
    ax.axhline(ort_int8_ms, color="tab:red", ls="--", label="onnxruntime int8")
    ax.axhline(untuned_ms, color="tab:gray", ls=":", label="qcompile int8, untuned")
    ax.set_xlabel("measured trials (all kernels)")
    ax.set_ylabel("model latency, ms (median)")
    ax.set_title("Fashion-MNIST CNN int8, batch 1: tuning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16, help="tuning trials per kernel, Fashion-MNIST CNN")
    parser.add_argument("--en-trials", type=int, default=8, help="tuning trials per kernel, EfficientNet-Lite0 (batch 1)")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST only, batch 1, 2 trials")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    RECORDS.mkdir(exist_ok=True)
    x_train, _ = fashion_mnist("train")
    x_test, _ = fashion_mnist("t10k")
    rng = np.random.default_rng(0)
    photos = D.real_photos()
    models = [Model("fashion-cnn", fashion_mnist_cnn_onnx(), (1, 28, 28), x_train[:256], x_test[:1])]
    if not args.quick:
        en_calib = np.concatenate([v for _, img in photos[:16] for v in D.augmented_views(img, 2, rng)])
        en_sample = D.preprocess(photos[-1][1])
        models.append(Model("efficientnet-lite0", D.efficientnet_lite0_onnx(WORK / "efficientnet_lite0.onnx"),
                            (3, 224, 224), en_calib, en_sample))
    start = time.perf_counter()
    curve: list = []
    sections = []
    for model in models:
        for batch in ((1,) if args.quick else (1, 8)):
            if args.quick:
                trials = 2
            elif model.name == "fashion-cnn":
                trials = args.trials
            else:
                trials = args.en_trials if batch == 1 else 0
            print(f"{model.name} batch {batch} ...", flush=True)
            rows = bench(model, batch, trials, args.repeat, curve if (model.name == "fashion-cnn" and batch == 1) else None,
                         avx2_too=detect_host()["family"] != "x86-avx2")
            sections.append((model, batch, rows))
            if model.name == "fashion-cnn" and batch == 1 and curve:
                plot_curve(curve, RESULTS / "tuning_curve.png", rows[1]["ms"],
                           next(r["ms"] for r in rows if r["name"] == "qcompile int8 untuned"))
    write(sections, curve, time.perf_counter() - start, args)


def write(sections, curve, seconds: float, args) -> None:
    import onnxruntime as ort

    host = detect_host()
    lines = ["# Speed: qcompile against onnxruntime (same CPU, same run)", "",
             f"Machine: {platform.machine()}, {_cpu_name()}, {os.cpu_count()} CPUs; schedule family `{host['family']}` "
             f"(features {' '.join(host['llvm']['mattr'])}). onnxruntime {ort.__version__}, default threads "
             f"(one per physical core); qcompile TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')} (qcompile/threads.py). "
             f"Median of {args.repeat} runs after warm-up; ratio = onnxruntime int8 ms / this row's ms "
             f"(> 1 is faster than onnxruntime int8). Benchmark wall time {seconds / 60:.0f} min.", ""]
    for model, batch, rows in sections:
        lines += [f"## {model.name}, batch {batch}", "", "| runtime | median ms | vs onnxruntime int8 | tuning |",
                  "| --- | ---: | ---: | --- |"]
        lines += [f"| {r['name']} | {r['ms']:.3f} | {r['ratio']:.2f}x | {r.get('note', '')} |" for r in rows]
        lines.append("")
    if curve:
        lines += ["## Tuning curve (Fashion-MNIST CNN int8, batch 1)", "", "![tuning curve](tuning_curve.png)", "",
                  "| trials (all kernels) | model ms | tuning s (cumulative) |", "| ---: | ---: | ---: |"]
        lines += [f"| {n} | {ms:.3f} | {s:.0f} |" for n, ms, s in curve]
        lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
