"""Build: model file -> Relax -> (quantize) -> schedules -> compiled, exported artifact."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata as pkg_metadata
from pathlib import Path

from .errors import QCompileError, compiling
from .frontends import load_model
from .passes import float_passes
from .layers import layer_table
from .targets import get_target
from .toolchain import compiler


@dataclass
class BuildResult:
    artifact: Path
    bundle: Path | None
    metadata: dict


def weight_bytes(mod) -> int:
    """Bytes of the tensor constants (the weights) that `main`'s bindings hold."""
    from .ir import const_value, constants_in, main_bindings

    return sum(const_value(c).nbytes for _, value in main_bindings(mod) for c in constants_in(value))


def quantize_step(mod, imported, quantize, calib):
    """(module, quantization report or None): the user's quantization, or the realization of a
    pre-quantized (QDQ) model, which would otherwise run as float with fake quantization."""
    from .quantize import QuantConfig, has_qdq, quantize_module, realize

    if quantize is None:
        if not has_qdq(mod):
            return mod, None
        return realize(mod), {"config": {"mode": "pre-quantized (QDQ)"}, "layers": []}
    if has_qdq(mod):
        raise QCompileError(f"{imported.source}: the model is already quantized (QDQ); build it without --quantize")
    config = quantize if isinstance(quantize, QuantConfig) else QuantConfig(**quantize)
    return quantize_module(mod, imported.inputs, calib, config, imported.layer_names)


def compile_module(mod, spec, records=None):
    """Compile a Relax module for `spec` with its schedule family's pipeline; with `records` (a
    tuning database folder), kernels tuned and verified there replace the default schedules."""
    import contextlib

    import tvm

    from schedules import relax_pipeline

    target = spec.tvm_target()
    database = None
    if records is not None:
        from .records import trusted_database

        database = trusted_database(records, spec)
    with compiling(spec), database if database is not None else contextlib.nullcontext():
        return tvm.compile(mod, target=target,
                           relax_pipeline=relax_pipeline(spec.schedule_family, target, tuned=database is not None))


@dataclass
class Prepared:
    spec: object
    imported: object
    float_mod: object
    mod: object
    quant_report: dict | None


def prepare(model, target: str, input_shapes=None, quantize=None, calib=None) -> Prepared:
    """Model file -> the Relax module a build compiles (and tuning tunes): imported, simplified,
    quantized when asked."""
    import tvm

    spec = get_target(target)
    compiler(spec)  # a missing toolchain fails before minutes of work
    imported = load_model(model, input_shapes)
    float_mod = tvm.transform.Sequential(float_passes())(imported.mod)
    mod, quant_report = quantize_step(float_mod, imported, quantize, calib)
    return Prepared(spec, imported, float_mod, mod, quant_report)


def build(model, target: str = "host", output="model.so", *, input_shapes: dict | None = None,
          bundle=None, quantize=None, calib=None, report=None, records=None, mixed=None) -> BuildResult:
    """Compile `model` for `target` into the shared library `output` (and a deploy bundle).
    `quantize`: a QuantConfig (or its fields as a dict) to quantize with `calib` data; `report`:
    a JSON path for the per-layer quantization report; `records`: a tuning database folder
    written by `tune` (the model is not tuned again). `mixed`: search a precision per layer
    first (keyword arguments of mixed.search, plus `config_out`, the JSON the choice is written to)."""
    import tvm

    prepared = prepare(model, target, input_shapes, None if mixed is not None else quantize, calib)
    mixed_result = None
    if mixed is not None:
        from .mixed import search
        from .quantize import QuantConfig

        options = dict(mixed)
        config_out = options.pop("config_out", None)
        base = quantize if isinstance(quantize, QuantConfig) else QuantConfig(**(quantize or {}))
        mixed_result, (prepared.mod, prepared.quant_report) = search(prepared, calib, base=base, **options)
    spec, imported, float_mod, mod, quant_report = (prepared.spec, prepared.imported, prepared.float_mod,
                                                    prepared.mod, prepared.quant_report)
    meta = {
        "qcompile_version": pkg_metadata.version("qcompile"),
        "tvm_version": tvm.__version__,
        "target": spec.name,
        "arch": spec.arch,
        "kind": spec.kind,
        "llvm": spec.llvm,
        "cuda": spec.cuda,
        "schedule_family": spec.schedule_family,
        "target_spec": spec.to_json(),
        "source": Path(imported.source).name,
        "format": imported.format,
        "inputs": [t.to_json() for t in imported.inputs],
        "outputs": [t.to_json() for t in imported.outputs],
        "layers": layer_table(mod, imported.layer_names),
        "built_on": platform.machine(),
        "quantization": quant_report["config"] if quant_report else None,
        "weight_bytes": weight_bytes(mod),
        "float_weight_bytes": weight_bytes(float_mod),
        "tuning_records": str(records) if records is not None else None,
    }
    if spec.kind == "vulkan":
        from .wgsl import compile_vulkan, write_artifact

        database = None
        if records is not None:
            from .records import trusted_database

            database = trusted_database(records, spec)
        artifact = write_artifact(Path(output), *compile_vulkan(mod, spec, imported.inputs, imported.outputs, database), meta)
    else:
        from .export import write_library

        artifact = write_library(compile_module(mod, spec, records), spec, Path(output), meta)
    from .export import write_bundle

    if mixed_result is not None:
        from .mixed_report import write_mixed

        try:
            write_mixed(mixed_result, Path(config_out) if config_out else artifact.with_suffix(".precision.json"))
        except BaseException:
            artifact.unlink(missing_ok=True)
            raise
        meta["mixed_precision"] = mixed_result.precisions
    if report is not None:
        write_report(Path(report), meta, quant_report, artifact)
    bundle_path = None
    if bundle is not None:
        try:
            bundle_path = write_bundle(spec, artifact, Path(bundle), meta)
        except BaseException:
            artifact.unlink(missing_ok=True)
            raise
    return BuildResult(artifact, bundle_path, meta)


def write_report(path: Path, meta: dict, quant_report: dict | None, artifact: Path) -> None:
    import json

    from .atomic import atomic_file

    data = {"artifact": str(artifact), "artifact_bytes": artifact.stat().st_size, "target": meta["target"],
            "weight_bytes": meta["weight_bytes"], "float_weight_bytes": meta["float_weight_bytes"],
            "quantization": quant_report["config"] if quant_report else None,
            "calibration_batches": (quant_report or {}).get("calibration_batches"),
            "layers": (quant_report or {}).get("layers") or meta["layers"], "compiled_layers": meta["layers"]}
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2))
