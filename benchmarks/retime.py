"""Re-time the int8 artifacts of the last `speed.py` run against onnxruntime int8, interleaved.

This shared machine's speed moves by up to 2x over minutes (onnxruntime int8 on EfficientNet-Lite0
at batch 8 took 33 ms and 67 ms an hour apart), so speed.py's one-pass ratios carry that drift.
Here each round times onnxruntime int8, then each qcompile artifact, in blocks seconds apart, and
a row's ratio is the median over rounds of (onnxruntime ms / its ms) within the same round.
Writes benchmarks/results/speed_retimed.md. Run speed.py first (it builds the artifacts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from float_baseline import median_ms  # noqa: E402
from speed import RESULTS, WORK  # noqa: E402

import qcompile  # noqa: E402,F401 - sets the thread count before TVM runs anything
from qcompile.backends.cpu.run import load_library  # noqa: E402

CASES = [("fashion-cnn", (1, 28, 28), 1), ("fashion-cnn", (1, 28, 28), 8),
         ("efficientnet-lite0", (3, 224, 224), 1), ("efficientnet-lite0", (3, 224, 224), 8)]
BUILDS = [("int8 untuned", "int8"), ("int8 tuned", "int8-t"), ("fp32 untuned", "fp32"), ("fp32 tuned", "fp32-t")]


def _timers(name: str, shape: tuple, batch: int, repeat: int) -> dict:
    import onnxruntime as ort
    import tvm
    from tvm import relax

    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    session = ort.InferenceSession(str(WORK / f"{name}-ort-int8.onnx"), providers=["CPUExecutionProvider"])
    timers = {"onnxruntime int8 (QDQ)": lambda: median_ms(lambda: session.run(None, {"image": x}), repeat)}
    arg = tvm.runtime.tensor(x)
    for label, slug in BUILDS:
        path = WORK / f"{name}-b{batch}-{slug}.so"
        if path.exists():
            vm = relax.VirtualMachine(load_library(path), tvm.cpu())
            timers[f"qcompile {label}"] = lambda vm=vm: median_ms(lambda: vm["main"](arg), repeat)
    return timers


def retime(name: str, shape: tuple, batch: int, rounds: int, repeat: int) -> list[dict]:
    timers = _timers(name, shape, batch, repeat)
    times = {label: [] for label in timers}
    for _ in range(rounds):
        for label, timer in timers.items():
            times[label].append(timer())
            time.sleep(0.3)  # onnxruntime's and TVM's idle workers spin for a moment after a run
    ort = times["onnxruntime int8 (QDQ)"]
    return [{"name": label, "ms": statistics.median(ts), "spread": (min(ts), max(ts)),
             "ratio": statistics.median(o / t for o, t in zip(ort, ts))} for label, ts in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    start = time.perf_counter()
    lines = ["# Speed re-timed: onnxruntime int8 and qcompile interleaved", "",
             f"The artifacts of the last `benchmarks/speed.py` run (same builds, same tuning records), "
             f"timed in {args.rounds} rounds; each round times every row in turn ({args.repeat} runs, median). "
             f"ms: the median over rounds (min-max in brackets); ratio: the median over rounds of "
             f"onnxruntime int8 ms / this row's ms in the same round. qcompile TVM_NUM_THREADS="
             f"{os.environ.get('TVM_NUM_THREADS')}, onnxruntime default threads. "
             "Wall time {wall}.", ""]
    for name, shape, batch in CASES:
        rows = retime(name, shape, batch, args.rounds, args.repeat)
        lines += [f"## {name}, batch {batch}", "", "| runtime | median ms | vs onnxruntime int8 |", "| --- | ---: | ---: |"]
        lines += [f"| {r['name']} | {r['ms']:.3f} ({r['spread'][0]:.3f}-{r['spread'][1]:.3f}) | {r['ratio']:.2f}x |"
                  for r in rows]
        lines.append("")
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
    text = "\n".join(lines).replace("{wall}", f"{(time.perf_counter() - start) / 60:.0f} min")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed_retimed.md").write_text(text)


if __name__ == "__main__":
    main()
