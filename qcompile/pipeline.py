"""Build: model file -> Relax -> (quantize) -> schedules -> compiled, exported artifact."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib import metadata as pkg_metadata
from pathlib import Path

from .errors import QCompileError
from .frontends import load_model
from .frontends.common import last_line
from .report import layer_table
from .targets import get_target
from .toolchain import compiler


@dataclass
class BuildResult:
    artifact: Path
    bundle: Path | None
    metadata: dict


def float_passes():
    """Inference simplifications every build gets before quantization or scheduling."""
    from tvm import relax

    return [relax.transform.DecomposeOpsForInference(), relax.transform.FoldConstant()]


def compile_module(mod, spec):
    """Compile a Relax module for `spec` with its schedule family's pipeline."""
    import tvm

    from schedules import relax_pipeline

    target = spec.tvm_target()
    try:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline(spec.schedule_family, target))
    except Exception as err:  # noqa: BLE001 - TVM's errors become one line for the user.
        raise QCompileError(f"compiling for target '{spec.name}' failed: {last_line(err)}") from None


def build(model, target: str = "host", output="model.so", *, input_shapes: dict | None = None,
          bundle=None) -> BuildResult:
    """Compile `model` for `target` into the shared library `output` (and a deploy bundle)."""
    import tvm

    spec = get_target(target)
    compiler(spec)  # a missing toolchain fails before minutes of work
    imported = load_model(model, input_shapes)
    mod = tvm.transform.Sequential(float_passes())(imported.mod)
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
    }
    executable = compile_module(mod, spec)
    from .export import write_bundle, write_library

    artifact = write_library(executable, spec, Path(output), meta)
    bundle_path = None
    if bundle is not None:
        try:
            bundle_path = write_bundle(spec, artifact, Path(bundle), meta)
        except BaseException:
            artifact.unlink(missing_ok=True)
            raise
    return BuildResult(artifact, bundle_path, meta)
