"""Mixed precision: search a precision per layer under an accuracy budget (search.py), then build
the choice and write it beside the artifact (report.py)."""

from __future__ import annotations

from pathlib import Path

from ..builder import BuildResult, build_prepared, prepare
from ..quantize import QuantConfig
from .config import OBJECTIVES, MixedResult, read_precision_config
from .report import write_mixed
from .search import search


def build_mixed(model, target: str = "host", output="model.so", *, input_shapes=None, bundle=None, quantize=None,
                calib=None, report=None, records=None, config_out=None, verify: bool = True, input_values=None,
                **options) -> BuildResult:
    """The search (keyword arguments of search), then the build of its choice; the choice is
    written as JSON to `config_out` (default: beside the artifact, .precision.json)."""
    prepared = prepare(model, target, input_shapes, None, calib, input_values)
    base = quantize if isinstance(quantize, QuantConfig) else QuantConfig(**(quantize or {}))
    result, (prepared.mod, prepared.quant_report, prepared.simulated) = search(prepared, calib, base=base, **options)

    def write_choice(artifact: Path, meta: dict) -> None:
        write_mixed(result, Path(config_out) if config_out else artifact.with_suffix(".precision.json"))
        meta["mixed_precision"] = result.precisions

    return build_prepared(prepared, output, bundle=bundle, report=report, records=records, on_artifact=write_choice,
                          verify=verify, calib=calib)


__all__ = ["OBJECTIVES", "MixedResult", "build_mixed", "read_precision_config", "search"]
