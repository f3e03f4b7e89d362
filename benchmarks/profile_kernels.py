"""Where a model's latency goes: every fused kernel of a model, scheduled as the build schedules it,
compiled alone and timed on this CPU (TVM's time evaluator, random inputs), sorted by time.

    python benchmarks/profile_kernels.py MODEL [--quantize] [--input-shape NAME:D0,D1,...] [--top 15]
    python benchmarks/profile_kernels.py --zoo face-detection --quantize

The kernel times add up to about the model's latency (the VM's own overhead between kernels aside).
"""

from __future__ import annotations

import argparse
import sys

from qcompile import zoo
from qcompile.backends import backend_for
from qcompile.backends.base import param_types, random_arrays, time_us
from qcompile.builder import prepare
from qcompile.threads import use_physical_cores


def profile(model, target: str = "host", input_shapes=None, input_values=None, quantize=None, calib=None) -> list[dict]:
    import tvm

    prepared = prepare(model, target, input_shapes, quantize, calib, input_values)
    backend = backend_for(prepared.spec)
    target_obj = backend.tvm_target()
    rows = []
    for name, task in backend.fused_kernels(prepared.mod, target_obj):
        scheduled = backend.default_schedule(task, target_obj)
        func = scheduled["main"]
        lib = tvm.compile(scheduled, target=target_obj)
        lib = getattr(lib, "mod", lib)  # the runtime module inside the executable
        device = tvm.cpu()
        arrays = [tvm.runtime.tensor(a, device) for a in random_arrays(param_types(func))]
        rows.append({"kernel": name, "us": time_us(lib, device, arrays, number=10, repeat=3, min_repeat_ms=5),
                     "shapes": [shape for shape, _ in param_types(func)]})
    rows.sort(key=lambda r: -r["us"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("--zoo", help="a zoo model by name (qcompile/zoo.py)")
    parser.add_argument("--quantize", action="store_true", help="int8 (calibrated on 4 zoo samples or random inputs)")
    parser.add_argument("--input-shape", action="append", default=[])
    parser.add_argument("--target", default="host")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    use_physical_cores()
    shapes = {s.split(":")[0]: [int(d) for d in s.split(":")[1].split(",")] for s in args.input_shape}
    values, calib = {}, None
    if args.zoo:
        spec = zoo.ZOO[args.zoo]
        model, shapes, values = zoo.fetch(args.zoo), {**spec.input_shapes, **shapes}, spec.input_values
    elif args.model:
        model = args.model
    else:
        sys.exit("give a model file or --zoo NAME")
    if args.quantize:
        from qcompile.frontends import load_model

        imported = load_model(model, shapes or None, values or None)
        inputs = imported.inputs
        calib = (zoo.samples(args.zoo, imported, 4) if args.zoo else
                 [{t.name: a for t, a in zip(inputs, random_arrays([(t.shape, t.dtype) for t in inputs], seed))}
                  for seed in range(4)])
    rows = profile(model, args.target, shapes or None, values or None, {"progress": False} if args.quantize else None,
                   calib)
    total = sum(r["us"] for r in rows)
    print(f"{len(rows)} kernels, {total / 1e3:.3f} ms in all")
    for r in rows[:args.top]:
        print(f"{r['us']:10.1f} us {100 * r['us'] / total:5.1f}%  {r['kernel']}  {r['shapes']}")


if __name__ == "__main__":
    main()
