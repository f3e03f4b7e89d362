"""The public `build`: a plain build, or, with `mixed`, the per-layer precision search that ends
in one."""

from __future__ import annotations

from .atomic import check_writable
from .builder import BuildResult
from .builder import build as build_with_config
from .timing import record


def build(model, target: str = "host", output="model.so", *, input_shapes: dict | None = None,
          bundle=None, quantize=None, calib=None, report=None, records=None, mixed=None,
          verify: bool = True, input_values: dict | None = None) -> BuildResult:
    """Compile `model` for `target` into the artifact `output` (and a deploy bundle).
    `quantize`: a QuantConfig (or its fields as a dict) to quantize with `calib` data; `report`:
    a JSON path for the per-layer quantization report; `records`: a tuning database folder
    written by `tune` (the model is not tuned again). `mixed`: search a precision per layer
    first (keyword arguments of mixed.search, plus `config_out`, the JSON the choice is written to).
    `verify`: run the compiled model beside the model's own runtime before writing it (a float
    build that disagrees is refused; a quantized one's agreement is recorded). `input_values`: inputs
    frozen to constants by name (ONNX; e.g. a sample rate whose value selects a branch of the graph)."""
    # Every path written at the end is checked now, not after minutes of compiling.
    for path in (output, report, (mixed or {}).get("config_out")):
        if path is not None:
            check_writable(path)
    if bundle is not None:
        check_writable(bundle, folder=True)
    with record() as seconds:
        if mixed is None:
            result = build_with_config(model, target, output, input_shapes=input_shapes, bundle=bundle,
                                       quantize=quantize, calib=calib, report=report, records=records, verify=verify,
                                       input_values=input_values)
        else:
            from .mixed import build_mixed

            result = build_mixed(model, target, output, input_shapes=input_shapes, bundle=bundle, quantize=quantize,
                                 calib=calib, report=report, records=records, verify=verify,
                                 input_values=input_values, **mixed)
    result.seconds = seconds
    return result
