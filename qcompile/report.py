"""What a build records about itself: the artifact's metadata and the per-layer JSON report."""

from __future__ import annotations

import json
import platform
from importlib import metadata as pkg_metadata
from pathlib import Path

from .atomic import atomic_file
from .ir import const_value, constants_in, main_bindings
from .layers import layer_table


def weight_bytes(mod) -> int:
    """Bytes of the tensor constants (the weights) that `main`'s bindings hold."""
    return sum(const_value(c).nbytes for _, value in main_bindings(mod) for c in constants_in(value))


def build_metadata(prepared, records=None) -> dict:
    """The metadata embedded in the artifact (and written beside it in a bundle)."""
    import tvm

    spec, imported, mod = prepared.spec, prepared.imported, prepared.mod
    quant_report = prepared.quant_report
    return {
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
        "frozen_inputs": {name: value.tolist() for name, value in imported.frozen.items()},
        "outputs": [t.to_json() for t in imported.outputs],
        "layers": layer_table(mod, imported.layer_names),
        "built_on": platform.machine(),
        "quantization": quant_report["config"] if quant_report else None,
        "weight_bytes": weight_bytes(mod),
        "float_weight_bytes": weight_bytes(prepared.float_mod),
        "tuning_records": str(records) if records is not None else None,
    }


def write_report(path: Path, meta: dict, quant_report: dict | None, artifact: Path, seconds: dict | None = None) -> None:
    data = {"artifact": str(artifact), "artifact_bytes": artifact.stat().st_size, "target": meta["target"],
            "weight_bytes": meta["weight_bytes"], "float_weight_bytes": meta["float_weight_bytes"],
            "quantization": quant_report["config"] if quant_report else None,
            "calibration_batches": (quant_report or {}).get("calibration_batches"),
            "layers": (quant_report or {}).get("layers") or meta["layers"], "compiled_layers": meta["layers"],
            "verification": meta.get("verification"), "build_seconds": seconds}
    with atomic_file(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2))
