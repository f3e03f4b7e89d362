"""Mixed precision: the per-layer bit-width search against uniform int8 and fp32, in one run.
Writes benchmarks/results/mixed.md and one Pareto plot per model and objective.

    python benchmarks/mixed.py [--models fashion,efficientnet] [--objectives latency,size]

For each model and objective: `qcompile build --quantize mixed` (sensitivity, measured per-layer
cost, ILP candidates checked in simulation, the chosen one built and checked), then uniform int8,
uniform fp32 and the chosen configuration built and measured for real: metric on the search data,
median latency on this machine, artifact bytes. The budget is the drop uniform int8 itself has
or 0.5 points, whichever is larger; the verdict compares the mixed build with uniform int8 at equal accuracy.

Fashion-MNIST CNN: 1000 test images with labels, batch 100 (metric: top-1 accuracy).
EfficientNet-Lite0: the 43 photos of benchmarks/accuracy.py, batch 1 (metric: top-1 agreement with
the float model); the search's data is also the data it is scored on (there are no more photos)."""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import datasets as D  # noqa: E402

import qcompile  # noqa: E402
from qcompile.backends.cpu.run import load_library  # noqa: E402
from qcompile.builder import prepare  # noqa: E402
from qcompile.mixed import read_precision_config, search  # noqa: E402
from qcompile.mixed.report import checked_table_md, layer_table_md, write_mixed  # noqa: E402
from qcompile.quantize import QuantConfig  # noqa: E402
from qcompile.quantize.sensitivity import as_tensors, run_batches, top1_metric  # noqa: E402

RESULTS = HERE / "results"
WORK = HERE / "work" / "mixed"


def measure(artifact: Path, x: np.ndarray, batch: int) -> tuple[np.ndarray, float]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(load_library(artifact), tvm.cpu())
    y = run_batches(vm, as_tensors([{"image": x[i:i + batch]} for i in range(0, len(x), batch)], ["image"]))
    timer = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=30, min_repeat_ms=50)
    ms = float(np.median(timer(tvm.runtime.tensor(np.ascontiguousarray(x[:batch]))).results)) * 1e3
    return y, ms


def models(names: list[str]):
    if "fashion" in names:
        x, y = D.fashion_mnist("t10k")
        yield "fashion-cnn", D.FASHION_ONNX, x[:1000], y[:1000], 100
    if "efficientnet" in names:
        photos = [D.preprocess(img) for _, img, _ in D.imagenet_labeled()] + [D.preprocess(img) for _, img in D.real_photos()]
        yield "efficientnet-lite0", D.efficientnet_lite0_onnx(HERE / "work" / "efficientnet_lite0.onnx"), np.concatenate(photos), None, 1


def run_model(name, onnx_path, x, labels, batch, objectives) -> list[dict]:
    WORK.mkdir(parents=True, exist_ok=True)
    calib = WORK / f"{name}-data.npz"
    np.savez(calib, image=x)
    label_file = None
    if labels is not None:
        label_file = WORK / f"{name}-labels.npy"
        np.save(label_file, labels)
    shape = {"image": [batch, *x.shape[1:]]}
    common = {"progress": False}
    built = {}
    for variant in ("fp32", "int8"):
        t = time.time()
        kw = {} if variant == "fp32" else {"quantize": dict(common), "calib": calib}
        res = qcompile.build(onnx_path, "host", WORK / f"{name}-{variant}.so", input_shapes=shape, **kw)
        y, ms = measure(res.artifact, x, batch)
        built[variant] = {"y": y, "ms": ms, "bytes": res.artifact.stat().st_size, "build_s": time.time() - t}
    reference = built["fp32"]["y"]
    for b in built.values():
        b["metric"] = top1_metric(b["y"], reference, labels)
    int8_drop = built["fp32"]["metric"] - built["int8"]["metric"]
    # a user's budget (0.5 points from float), and uniform int8's own drop: is any mixed choice better
    # than uniform int8 on the objective without losing accuracy against it? (+1e-6: not rounded down,
    # uniform int8 itself must fit its own drop)
    budgets = dict.fromkeys([max(0.5, int8_drop) + 1e-6, int8_drop + 1e-6])
    sections = []
    for objective, budget in ((o, b) for o in objectives for b in budgets):
        t = time.time()
        tag = f"{objective}" + ("-int8-drop" if budget < max(budgets) else "")
        out = WORK / f"{name}-mixed-{tag}.so"
        config = WORK / f"{name}-mixed-{tag}.precision.json"
        prepared = prepare(onnx_path, "host", shape)
        result, _ = search(prepared, calib, labels=label_file, max_drop=budget, objective=objective,
                           base=QuantConfig(progress=False), cache_dir=WORK / "cache", progress=True)
        search_s = time.time() - t
        write_mixed(result, config)
        res = qcompile.build(onnx_path, "host", out, input_shapes=shape, calib=calib,
                             quantize={**common, "precisions": read_precision_config(config)})
        y, ms = measure(res.artifact, x, batch)
        mixed = {"y": y, "ms": ms, "bytes": res.artifact.stat().st_size, "metric": top1_metric(y, reference, labels)}
        counts = {}
        for p in result.precisions.values():
            counts[p] = counts.get(p, 0) + 1
        key = "ms" if objective == "latency" else "bytes"
        better = mixed[key] < built["int8"][key] and mixed["metric"] >= built["int8"]["metric"] - 1e-9
        png = RESULTS / f"mixed_{name}_{tag.replace('-', '_')}.png"
        shutil.copyfile(config.with_suffix(".png"), png)
        sections.append({"model": name, "objective": objective, "budget": budget, "int8_drop": int8_drop, "result": result, "built": built,
                         "mixed": mixed, "counts": counts, "better": better, "search_s": search_s, "png": png.name,
                         "batch": batch, "n": len(x)})
        print(f"{name} {objective}: mixed {mixed[key]:.4g} vs int8 {built['int8'][key]:.4g} "
              f"metric {mixed['metric']:.2f} vs {built['int8']['metric']:.2f} ({search_s:.0f} s)", flush=True)
    return sections


def write(sections: list[dict], seconds: float) -> None:
    lines = ["# Mixed precision: per-layer bit-width search against uniform int8 and fp32", "",
             f"Generated by `python benchmarks/mixed.py` on {platform.machine()} ({seconds / 60:.0f} min). Host target; "
             "latency is the median of 30 timed runs of the built artifact, size the artifact's bytes, the metric is "
             "measured with the built artifact on the search's data. Each objective is searched under two budgets "
             "of accuracy drop from float: the larger of 0.5 points and uniform int8's own drop, and uniform int8's "
             "own drop (a mixed choice no less accurate than uniform int8); one section where they are equal.", ""]
    for s in sections:
        r, b, m = s["result"], s["built"], s["mixed"]
        key = "ms" if s["objective"] == "latency" else "bytes"
        gain = b["int8"][key] / m[key]
        below = b["int8"]["metric"] - m["metric"]
        all_int8 = set(s["counts"]) == {"int8"}
        if s["objective"] == "latency":
            uniform = ("the fastest configuration measured within the budget is uniform int8 itself: no mixed candidate "
                       "beat it (timed candidates below; the mixed and uniform int8 rows are then the same build, and "
                       "their latencies differ by this machine's run-to-run noise)")
        else:
            int4 = [row["sensitivity"]["int4"]["drop"] for row in r.layers if "int4" in row["sensitivity"]]
            uniform = ("uniform int8 itself is the smallest configuration within the budget: only int4 makes a layer "
                       "smaller than int8 (fp16 and fp32 weights are larger), and int4 on any one layer alone already "
                       f"drops {r.metric} by {min(int4):.2f} to {max(int4):.2f} points in simulation (column `drop int4`)"
                       + (f", more than the {s['budget']:.2f}-point budget allows" if min(int4) > s["budget"] else
                          "; the candidates that used it went over the budget when built (below)"))
        verdict = (uniform if all_int8 else
                   f"{gain:.3f}x uniform int8 on the objective at equal or better accuracy" if s["better"] else
                   f"{gain:.3f}x uniform int8 on the objective (worse), at {-below:.2f} points above uniform int8's "
                   f"accuracy: not better than uniform int8 on the objective" if below <= 0 else
                   f"{gain:.3f}x uniform int8 on the objective, but {below:.2f} points below "
                   f"uniform int8 (within the budget from float): not better than uniform int8 at equal accuracy")
        which = ("uniform int8's own drop: no worse than uniform int8" if s["budget"] <= s["int8_drop"] + 1e-5
                 else "from float")
        lines += [f"## {s['model']}: objective {s['objective']} (budget {s['budget']:.2f} points of {r.metric}, {which}; "
                  f"batch {s['batch']}, {s['n']} samples)", "",
                  "| build | " + r.metric + " | latency ms | artifact KB | layers |", "|---|---:|---:|---:|---|",
                  f"| fp32 | {b['fp32']['metric']:.2f}% | {b['fp32']['ms']:.3f} | {b['fp32']['bytes'] / 1e3:.0f} | all fp32 |",
                  f"| uniform int8 | {b['int8']['metric']:.2f}% | {b['int8']['ms']:.3f} | {b['int8']['bytes'] / 1e3:.0f} | all int8 |",
                  f"| **mixed** | {m['metric']:.2f}% | {m['ms']:.3f} | {m['bytes'] / 1e3:.0f} | "
                  + ", ".join(f"{n} {p}" for p, n in sorted(s["counts"].items())) + " |", "",
                  f"Verdict: {verdict}. Search time {s['search_s'] / 60:.1f} min; {len(r.candidates)} ILP candidates, "
                  f"{len(r.checked)} built and checked:", "", checked_table_md(r), "",
                  f"![pareto]({s['png']})", "", "<details><summary>per-layer table</summary>", "", layer_table_md(r), "",
                  "</details>", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mixed.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="fashion,efficientnet")
    ap.add_argument("--objectives", default="latency,size")
    args = ap.parse_args()
    t = time.time()
    sections = []
    for spec in models(args.models.split(",")):
        sections += run_model(*spec, args.objectives.split(","))
        write(sections, time.time() - t)
    print(f"wrote {RESULTS / 'mixed.md'}")


if __name__ == "__main__":
    main()
