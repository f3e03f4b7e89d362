"""The `qcompile` command: build, tune, debug, run, inspect, targets, demo. Errors print as one line, exit 2."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from .errors import Interrupted, QCompileError


def _shapes(items: list[str] | None) -> dict[str, list[int]]:
    shapes = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name:
            raise QCompileError(f"--input-shape '{item}': expected NAME:D0,D1,... (e.g. x:1,3,224,224)")
    return shapes


def _values(items: list[str] | None) -> dict[str, list[float]]:
    values = {}
    for item in items or []:
        name, sep, numbers = item.partition("=")
        try:
            values[name] = [float(v) for v in numbers.split(",")]
        except ValueError:
            sep = ""
        if not sep or not name:
            raise QCompileError(f"--input-value '{item}': expected NAME=V or NAME=V0,V1,... (e.g. sr=16000)")
    return values


def _quantize(args) -> dict | None:
    if getattr(args, "precision_config", None) and args.quantize != "int8":
        raise QCompileError("--precision-config is used with --quantize int8 (it replaces the search of --quantize mixed)")
    if args.quantize:
        precisions = {}
        if getattr(args, "precision_config", None):
            from .mixed import read_precision_config

            precisions = read_precision_config(args.precision_config)
        return {"mode": args.mode, "method": args.calib_method, "percentile": args.percentile,
                "per_channel": args.per_channel, "weight_bits": args.weight_bits, "group_size": args.group_size, "smooth_quant": args.smooth_quant, "symmetric": not args.asymmetric,
                "bias_correction": not args.no_bias_correction, "precisions": precisions,
                "skip_layers": frozenset(args.skip or ()), "skip_ops": frozenset(args.skip_op or ()),
                "progress": sys.stderr.isatty()}  # a bar in a log is noise around the one error line
    if args.calib:
        raise QCompileError("--calib is only used with --quantize int8 or mixed")
    return None


def _mixed(args) -> dict | None:
    if args.quantize != "mixed":
        if args.labels or args.precision_out or args.rpc_tracker:
            raise QCompileError("--labels, --precision-out and --rpc-tracker are used with --quantize mixed")
        return None
    if args.mode != "static":
        raise QCompileError("--quantize mixed builds integer kernels: --mode must be static")
    if not args.calib:
        raise QCompileError("--quantize mixed needs calibration data (--calib), on which the accuracy drop is measured")
    from pathlib import Path

    return {"labels": args.labels, "max_drop": args.max_accuracy_drop, "objective": args.objective,
            "config_out": args.precision_out, "progress": sys.stderr.isatty(),
            "cache_dir": Path(args.search_cache).expanduser(), "rpc": _rpc(args)}


def cmd_build(args) -> None:
    from .api import build
    from .timing import summary

    result = build(args.model, args.target, args.output, input_shapes=_shapes(args.input_shape),
                   input_values=_values(args.input_value), bundle=args.bundle,
                   quantize=_quantize(args), calib=args.calib, report=args.report, records=args.records,
                   mixed=_mixed(args), verify=not args.no_verify)
    meta = result.metadata
    if meta.get("mixed_precision"):
        counts = {}
        for p in meta["mixed_precision"].values():
            counts[p] = counts.get(p, 0) + 1
        out = args.precision_out or result.artifact.with_suffix(".precision.json")
        print("mixed precision: " + ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
              + f"; wrote {out} (and its .md table and .png plot)")
    print(f"wrote {result.artifact} ({meta['target']}, {result.artifact.stat().st_size / 1e6:.2f} MB; "
          f"weights {meta['weight_bytes'] / 1e6:.2f} MB, float weights {meta['float_weight_bytes'] / 1e6:.2f} MB)")
    print(verification_line(meta["verification"]))
    print(f"built in {summary(result.seconds)}")
    if args.report:
        print(f"wrote report {args.report}")
    if result.bundle:
        print(f"wrote bundle {result.bundle}/")


def verification_line(v: dict) -> str:
    if not v.get("verified"):
        return f"not verified: {v.get('why')}"
    worst = max(v["outputs"], key=lambda row: row["max_rel_error"])
    line = (f"verified against {v['reference']} on {v['samples']} sample(s): largest difference "
            f"{worst['max_rel_error']:.2g} of the output's magnitude ('{worst['output']}')")
    if v["quantized"]:
        agreement = [row["top1_agreement"] for row in v["outputs"] if "top1_agreement" in row]
        line += (f"; quantized: SQNR {min(row['sqnr_db'] for row in v['outputs']):.1f} dB"
                 + (f", top-1 agreement {min(agreement):.0%}" if agreement else ""))
    return line


def cmd_debug(args) -> None:
    from .debug import debug
    from .debug_report import layer_table

    if args.top < 1:
        raise QCompileError(f"--top {args.top}: show at least one layer")
    result = debug(args.model, args.calib, quantize=_quantize(args), input_shapes=_shapes(args.input_shape),
                   input_values=_values(args.input_value), json=args.json, plot=args.plot,
                   progress=sys.stderr.isatty())
    print(layer_table(result, args.top))
    print(result.summary())
    for path in (args.json, args.plot):
        if path:
            print(f"wrote {path}")


def cmd_tune(args) -> None:
    from .tuning import tune

    rpc = _rpc(args)
    if args.quantize == "mixed":
        raise QCompileError("tune a mixed configuration as --quantize int8 --precision-config JSON (the search's output)")
    result = tune(args.model, args.target, args.records, args.trials, input_shapes=_shapes(args.input_shape),
                  input_values=_values(args.input_value),
                  quantize=_quantize(args), calib=args.calib, rpc=rpc, seed=args.seed)
    width = max(len(t.name) for t in result.tasks) if result.tasks else 10
    print(f"{'kernel':<{min(width, 60)}}  trials  best ms  default ms  verdict")
    for t in result.tasks:
        best = f"{t.best_ms:.4f}" if t.best_ms is not None else "-"
        default = f"{t.default_ms:.4f}" if t.default_ms is not None else "-"
        if t.verified is None:
            verdict = "-"
        elif not t.verified:
            verdict = f"WRONG (diff {t.max_diff:.2e}); not used"
        else:
            verdict = "used" if t.used else "right, but the default schedule is faster; not used"
        print(f"{t.name[:60]:<{min(width, 60)}}  {t.trials:>6}  {best:>7}  {default:>10}  {verdict}")
    print(f"{result.new_trials} new trials in {result.seconds:.0f} s; records in {result.records}/ "
          f"(use: qcompile build ... --records {result.records})")


def cmd_run(args) -> None:
    from .execute import run

    result = run(args.artifact, args.input, args.output, bundle=args.bundle, repeat=args.repeat)
    for name, arr in result.outputs.items():
        print(f"{name}: shape {list(arr.shape)} {arr.dtype}")
    if result.latency_ms is not None:
        print(f"median latency over {args.repeat} runs: {result.latency_ms:.3f} ms ({result.how})")
    if args.output:
        print(f"wrote {args.output}")


def cmd_inspect(args) -> None:
    from .artifact import read_metadata

    meta = read_metadata(args.artifact)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return
    print(f"artifact:  {args.artifact}")
    print(f"target:    {meta['target']} ({meta['arch']}, {meta['kind']}, schedules: {meta['schedule_family']})")
    print(f"llvm:      {json.dumps(meta['llvm'])}")
    print(f"source:    {meta['source']} ({meta['format']}); tvm {meta['tvm_version']}")
    if "verification" in meta:
        print(f"verified:  {verification_line(meta['verification'])}")
    for role in ("inputs", "outputs"):
        for t in meta[role]:
            print(f"{role[:-1]:<10} {t['name']}: {t['shape']} {t['dtype']}")
    layers = meta.get("layers", [])
    print(f"layers:    {len(layers)} compute ops")
    for row in layers:
        print(f"  {row['name']:<40} {row['op']:<10} in {row['input_dtype']:<8} weight {row['weight_dtype']:<8} out {row['output_dtype']}")


def cmd_targets(args) -> None:
    from .targets import list_targets

    for spec in list_targets():
        print(f"{spec.name:<16} {spec.arch:<8} {spec.schedule_family:<12} {spec.description}")


def cmd_demo(args) -> None:
    from .demo import demo

    demo(args.workdir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qcompile", description="Quantizing model compiler on Apache TVM")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="compile a model into a deployable shared library")
    b.add_argument("model", help="model file: .onnx, .tflite or torch.export .pt2")
    b.add_argument("--target", "-t", default="host", help="target name (see `qcompile targets`) or a target .toml")
    b.add_argument("--output", "-o", default="model.so", help="artifact path (default model.so)")
    b.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,..", help="fix an input's shape (repeatable)")
    b.add_argument("--input-value", action="append", metavar="NAME=V[,V..]",
                   help="freeze an input to a constant, e.g. a sample rate that selects a branch (ONNX; repeatable)")
    b.add_argument("--bundle", metavar="DIR", help="also write a deploy bundle (runtime libraries, runner, README)")
    b.add_argument("--records", metavar="DIR", help="tuning records from `qcompile tune` (verified kernels replace default schedules)")
    b.add_argument("--no-verify", action="store_true",
                   help="skip running the compiled model beside the model's own runtime before writing it")
    _quantization_args(b)
    _rpc_args(b.add_argument_group("remote measurement (--quantize mixed --objective latency)"),
              ": the mixed search's latencies on a remote board")
    q = b.add_argument_group("report")
    q.add_argument("--report", metavar="JSON", help="write the per-layer report (precision, scales, sizes)")
    b.set_defaults(func=cmd_build)

    tu = sub.add_parser("tune", help="autotune a model's kernels with MetaSchedule; records persist and resume")
    tu.add_argument("model", help="model file: .onnx, .tflite or torch.export .pt2")
    tu.add_argument("--target", "-t", default="host", help="target name or .toml (default host)")
    tu.add_argument("--trials", type=int, default=64, help="measured trials per kernel (default 64)")
    tu.add_argument("--records", default="tuning-records", metavar="DIR", help="records folder (default tuning-records)")
    tu.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,..", help="fix an input's shape (repeatable)")
    tu.add_argument("--input-value", action="append", metavar="NAME=V[,V..]", help="freeze an input to a constant (repeatable)")
    _rpc_args(tu)
    tu.add_argument("--seed", type=int, default=0)
    _quantization_args(tu)
    tu.set_defaults(func=cmd_tune)
    _debug_command(sub)
    _other_commands(sub)
    return p


def _debug_command(sub) -> None:
    d = sub.add_parser("debug", help="per-layer quantization error: which layer costs the accuracy, and what helps")
    d.add_argument("model", help="model file: .onnx, .tflite or torch.export .pt2")
    d.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,..", help="fix an input's shape (repeatable)")
    d.add_argument("--input-value", action="append", metavar="NAME=V[,V..]", help="freeze an input to a constant (repeatable)")
    _quantization_args(d, search=False)
    o = d.add_argument_group("output")
    o.add_argument("--json", metavar="JSON", help="write every layer's measurements and suggestion")
    o.add_argument("--plot", metavar="PNG", help="write per-layer SQNR bars (alone, in the full model)")
    o.add_argument("--top", type=int, default=10, metavar="N", help="how many of the worst layers to print (default 10)")
    d.set_defaults(func=cmd_debug, quantize="int8")


def _quantization_args(parser_, search: bool = True) -> None:
    """The quantization flags of build and tune; without `search`, those of one int8 configuration."""
    q = parser_.add_argument_group("quantization")
    if search:
        q.add_argument("--quantize", choices=["int8", "mixed"],
                       help="int8: quantize every layer (pre-quantized QDQ models need no flag); mixed: search "
                            "int4/int8/int4w/fp16/fp32 per layer under --max-accuracy-drop (int4w: block-wise int4 matmul "
                            "weights, float activations)")
    q.add_argument("--mode", default="static", choices=["static", "simulate", "dynamic", "weight-only"],
                   help="static: integer kernels from calibration (default); simulate: fake-quant in float; "
                        "dynamic / weight-only: int8 matmul weights, no calibration")
    q.add_argument("--calib", metavar="DATA", help="calibration data: .npz or a folder of .npy keyed by input name")
    q.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"],
                   help="how activation ranges are chosen (default percentile)")
    q.add_argument("--percentile", type=float, default=99.99, help="for --calib-method percentile (default 99.99)")
    g = q.add_mutually_exclusive_group()
    g.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="weight scales per output channel (default)")
    g.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor")
    q.add_argument("--weight-bits", type=int, default=8, choices=[8, 7, 4],
                   help="7: weights in [-63, 63], so AVX2 CPUs without VNNI use vpmaddubsw (four products per "
                        "instruction instead of two; the gain depends on the CPU, see README); 4: int4 block-wise "
                        "weights with --mode weight-only (a scale per --group-size weights); default 8")
    q.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128, 0],
                   help="with --weight-bits 4: weights per scale along K (default 128; 0: one per output channel)")
    q.add_argument("--smooth-quant", type=float, metavar="ALPHA",
                   help="SmoothQuant: move activation outliers into the matmul weights before calibration "
                        "(alpha in [0, 1], e.g. 0.5; for transformers)")
    q.add_argument("--asymmetric", action="store_true", help="uint8 asymmetric activations (default int8 symmetric)")
    q.add_argument("--no-bias-correction", action="store_true",
                   help="keep biases as trained (default: correct them for the mean weight-quantization error)")
    q.add_argument("--skip", action="append", metavar="LAYER", help="keep this layer in float (repeatable)")
    q.add_argument("--skip-op", action="append", metavar="OP", help="keep every op of this kind in float, e.g. add")
    q.add_argument("--precision-config", metavar="JSON", help="per-layer precisions written by --quantize mixed "
                   "(with --quantize int8: rebuild that choice without searching)")
    if not search:
        return
    m = parser_.add_argument_group("mixed precision (--quantize mixed)")
    m.add_argument("--max-accuracy-drop", type=float, default=0.5, metavar="POINTS",
                   help="largest drop of top-1 (percentage points) on the calibration data (default 0.5)")
    m.add_argument("--objective", choices=["latency", "size"], default="latency",
                   help="minimise measured latency on this machine (default) or weight bytes")
    m.add_argument("--labels", metavar="NPY", help="one class per calibration sample; without it the metric is "
                   "top-1 agreement with the float model")
    m.add_argument("--precision-out", metavar="JSON", help="where the chosen configuration goes "
                   "(default: the artifact's name with .precision.json)")
    m.add_argument("--search-cache", default="~/.cache/qcompile/mixed", metavar="DIR",
                   help="sensitivities and layer latencies are kept here between runs")


def _rpc_args(group, purpose: str = "") -> None:
    group.add_argument("--rpc-tracker", metavar="HOST:PORT", help=f"measure on devices registered at this TVM RPC tracker{purpose}")
    group.add_argument("--rpc-key", metavar="KEY", help="the devices' key at the tracker")
    group.add_argument("--rpc-timeout", type=int, default=30, help="seconds a remote measurement may take (default 30)")


def _rpc(args):
    from .tuning import RPC

    if bool(args.rpc_tracker) != bool(args.rpc_key):
        raise QCompileError("--rpc-tracker and --rpc-key go together")
    return RPC(args.rpc_tracker, args.rpc_key, args.rpc_timeout) if args.rpc_tracker else None


def _other_commands(sub) -> None:
    r = sub.add_parser("run", help="run an artifact on .npz inputs (emulated for other architectures)")
    r.add_argument("artifact")
    r.add_argument("--input", "-i", required=True, help=".npz keyed by input name")
    r.add_argument("--output", "-o", help=".npz to write, keyed by output name")
    r.add_argument("--bundle", help="bundle folder whose runner to use (default: the cached runtime)")
    r.add_argument("--repeat", type=int, default=0, help="time this many extra runs and print the median")
    r.set_defaults(func=cmd_run)

    i = sub.add_parser("inspect", help="what an artifact holds: target, inputs, outputs, layers")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("targets", help="list known targets")
    t.set_defaults(func=cmd_targets)

    d = sub.add_parser("demo", help="build the bundled example for host and rpi5, run both, compare with onnxruntime")
    d.add_argument("--workdir", default="qcompile-demo")
    d.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except Interrupted as err:
        # a second interrupt, pending from TVM's callbacks, would otherwise end the exit by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"qcompile: interrupted; {err}", file=sys.stderr)
        return 130
    except QCompileError as err:
        print(f"qcompile: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("qcompile: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output left (`qcompile inspect m.so | head`): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def entry() -> None:
    """The `qcompile` command. After an interrupt it leaves at once: TVM can deliver the interrupt
    again from its own threads, and one arriving while the interpreter finalizes (SIGINT's default
    handling restored) ended the process by SIGINT instead of exit code 130."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    entry()
