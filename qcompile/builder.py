"""Build: model file -> Relax -> float passes -> (quantize) -> the target's backend -> artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .backends import backend_for, host_engine
from .background import Background
from .errors import QCompileError
from .frontends import load_model
from .passes import float_passes
from .report import build_metadata, write_report
from .targets import get_target
from .timing import current, stage
from .toolchain import compiler


@dataclass
class BuildResult:
    artifact: Path
    bundle: Path | None
    metadata: dict
    seconds: dict = field(default_factory=dict)  # the build's time by stage (timing.py), set by api.build


@dataclass
class Prepared:
    spec: object
    imported: object
    float_mod: object
    mod: object
    quant_report: dict | None
    simulated: object = None  # the fake-quantized float module the integer one realizes (checked against it)


def quantize_step(mod, imported, quantize, calib):
    """(module, quantization report or None, simulated module or None): the user's quantization,
    or the realization of a pre-quantized (QDQ) model, which would otherwise run as float with fake
    quantization. The simulated module is the QDQ form an integer module was realized from."""
    from .quantize import QuantConfig, has_qdq, quantize_and_simulate, realize

    if quantize is None:
        if not has_qdq(mod):
            return mod, None, None
        return realize(mod), {"config": {"mode": "pre-quantized (QDQ)"}, "layers": []}, mod
    if has_qdq(mod):
        raise QCompileError(f"{imported.source}: the model is already quantized (QDQ); build it without --quantize")
    config = quantize if isinstance(quantize, QuantConfig) else QuantConfig(**quantize)
    return quantize_and_simulate(mod, imported.inputs, calib, config, imported.layer_names, engine=host_engine)


def prepare(model, target: str, input_shapes=None, quantize=None, calib=None, input_values=None) -> Prepared:
    """Model file -> the Relax module a build compiles (and tuning tunes): imported, simplified,
    quantized when asked."""
    spec = get_target(target)
    backend_for(spec)  # an unknown schedule family fails before minutes of work
    compiler(spec)  # and so does a missing toolchain
    imported, float_mod = import_float(model, input_shapes, input_values)
    with stage("quantize"):
        mod, quant_report, simulated = quantize_step(float_mod, imported, quantize, calib)
    return Prepared(spec, imported, float_mod, mod, quant_report, simulated)


def import_float(model, input_shapes=None, input_values=None):
    """(imported model, its Relax module after the float passes)."""
    import tvm

    with stage("import"):
        imported = load_model(model, input_shapes, input_values)
    with stage("float passes"):
        return imported, tvm.transform.Sequential(float_passes())(imported.mod)


def compile_module(mod, spec, records=None):
    """`mod` compiled by the backend of `spec`; with `records` (a tuning database folder), kernels
    tuned and verified there replace the default schedules."""
    backend, lowered = _lower(mod, spec, records)
    with stage("compile"):
        return backend.link(lowered)


def start_compile(mod, spec, records=None) -> Background:
    """compile_module's result, its Relax passes run here and its code (object code included where
    export needs it) generated on a thread of its own: the build lowers its simulation meanwhile."""
    backend, lowered = _lower(mod, spec, records)
    return Background(backend.generate, lowered)


def _lower(mod, spec, records=None):
    """(the backend of `spec`, `mod` through its Relax passes, `records`' kernels in scope)."""
    from .records import trusted_database

    database = trusted_database(records, spec, mod) if records is not None else None
    backend = backend_for(spec)
    with stage("compile"):
        return backend, backend.lower(mod, database)


def build(model, target: str = "host", output="model.so", *, input_shapes: dict | None = None,
          bundle=None, quantize=None, calib=None, report=None, records=None, verify: bool = True,
          input_values: dict | None = None) -> BuildResult:
    """Compile `model` for `target` into the artifact `output` (and a deploy bundle).
    `quantize`: a QuantConfig (or its fields as a dict; its `precisions` a per-layer configuration)
    to quantize with `calib` data; `report`: a JSON path for the per-layer quantization report;
    `records`: a tuning database folder written by `tune` (the model is not tuned again);
    `verify`: run the compiled model beside the model's own runtime first (verification.py);
    `input_values`: inputs frozen to constants by name (a mode switch such as a sample rate)."""
    prepared = prepare(model, target, input_shapes, quantize, calib, input_values)
    return build_prepared(prepared, output, bundle=bundle, report=report, records=records,
                          verify=verify, calib=calib)


def build_prepared(prepared: Prepared, output, *, bundle=None, report=None, records=None,
                   on_artifact=None, verify: bool = True, calib=None) -> BuildResult:
    """The rest of a build once the module is final. The compiled model is verified (unless
    `verify` is off) before anything is written: a float build that disagrees with the model's own
    runtime is refused. `on_artifact(path, metadata)` runs after the artifact is written (the
    mixed-precision search writes its choice there); if it or anything after it fails, the
    artifact is removed: no partial result is left behind."""
    from .verification import start_simulation
    from .verification import verify as verify_build

    backend = backend_for(prepared.spec)
    meta = build_metadata(prepared, records)
    code = start_compile(prepared.mod, prepared.spec, records)
    simulation = start_simulation(prepared) if verify else None  # lowered while the artifact's code is generated
    with stage("compile"):
        compiled = code.result()
    with stage("verify"):
        meta["verification"] = (verify_build(prepared, backend, compiled, meta, calib, simulation) if verify
                                else {"verified": False, "why": "--no-verify"})
    with stage("export"):
        artifact = backend.export(compiled, Path(output), meta)
    try:
        if on_artifact is not None:
            on_artifact(artifact, meta)
        if report is not None:
            write_report(Path(report), meta, prepared.quant_report, artifact, current())
        with stage("bundle"):
            bundle_path = backend.write_bundle(artifact, Path(bundle), meta) if bundle is not None else None
    except BaseException:
        artifact.unlink(missing_ok=True)
        raise
    return BuildResult(artifact, bundle_path, meta)
