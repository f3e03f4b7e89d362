"""ONNX frontend: ONNX file (with external data, or weights in Constant nodes) -> Relax."""

from __future__ import annotations

from pathlib import Path

from ..errors import QCompileError
from .common import ImportedModel, TensorInfo, check_input_names, last_line, output_infos, raise_unsupported, resolve_shape


COMPUTE_NODES = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def read_onnx(path: Path):
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as err:
        raise QCompileError(f"{path}: not a valid ONNX model ({type(err).__name__})") from None
    if not model.ir_version or not model.graph.node or not model.graph.output:
        raise QCompileError(f"{path}: not an ONNX model (no ir_version, nodes or outputs)")
    try:
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as err:
        raise QCompileError(f"{path}: cannot load its external weight data: {err}") from None
    return model


def unsupported_nodes(model):
    """(op, node name) for every node TVM's ONNX frontend cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"Constant", "If"}
    for i, node in enumerate(model.graph.node):
        standard = node.domain in ("", "ai.onnx")
        if node.op_type not in supported or not standard:
            yield (node.op_type if standard else f"{node.domain}.{node.op_type}"), node.name or f"#{i}"


def load_onnx(path: Path, input_shapes: dict[str, list[int]]) -> ImportedModel:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = read_onnx(path)
    raise_unsupported(str(path), unsupported_nodes(model))
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    check_input_names(str(path), [vi.name for vi in graph_inputs], input_shapes)
    inputs = []
    for vi in graph_inputs:
        ttype = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in ttype.shape.dim]
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        inputs.append(TensorInfo(vi.name, resolve_shape(str(path), vi.name, dims, input_shapes), dtype))
    try:
        mod = from_onnx(
            model,
            shape_dict={t.name: list(t.shape) for t in inputs},
            dtype_dict={t.name: t.dtype for t in inputs},
            keep_params_in_input=False,
            sanitize_input_names=False,
        )
    except Exception as err:  # TVM raises many types; the user gets one line.
        raise QCompileError(f"{path}: ONNX import failed: {last_line(err)}") from None
    outputs = output_infos(mod, [o.name for o in model.graph.output])
    layer_names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node) if n.op_type in COMPUTE_NODES]
    return ImportedModel(mod, inputs, outputs, str(path), "onnx", layer_names)
