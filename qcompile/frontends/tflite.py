"""TFLite frontend: .tflite flatbuffer -> Relax (float models; needs `pip install tflite`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import QCompileError, last_line
from .common import ImportedModel, TensorInfo, check_input_names, output_infos, raise_unsupported, resolve_shape

COMPUTE_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}


def _tensor_name(subgraph, index: int) -> str:
    return subgraph.Tensors(index).Name().decode()


def _op_code(converter, model, op) -> str:
    """The op's name as TVM's converter knows it, or, for one it refuses to name (a custom op,
    a code newer than its schema), what the model calls it."""
    try:
        return converter.get_op_code_str(op)
    except NotImplementedError:
        code = model.OperatorCodes(op.OpcodeIndex())
        custom = code.CustomCode()
        if custom:
            return f"custom op {custom.decode(errors='replace')}"
        return f"builtin op code {max(code.BuiltinCode(), code.DeprecatedBuiltinCode())}"


def _converter_class():
    """TVM's TFLite converter with the fixes real models needed."""
    from tflite.TensorType import TensorType
    from tvm import relax
    from tvm.relax.frontend.tflite.tflite_frontend import OperatorConverter

    class Converter(OperatorConverter):
        def convert_dequantize(self, op):
            # fp16 weights stored sparse (mediapipe's pose detector) reach DEQUANTIZE through a
            # DENSIFY whose dense result TVM keeps aside ("prefetched"); TVM reads the empty
            # buffer of the sparse tensor instead and fails.
            (tensor,) = self.get_input_tensors(op)
            if tensor.tensor.Type() == TensorType.FLOAT16 and self.is_prefetched(tensor.tensor_idx):
                value = np.asarray(self.get_prefetched_node(tensor.tensor_idx), np.float16)
                return relax.op.astype(self.exp_tab.new_const(value, dtype="float16",
                                                              source_name=tensor.tensor.Name()), "float32")
            return super().convert_dequantize(op)

    return Converter


def load_tflite(path: Path, input_shapes: dict[str, list[int]]) -> ImportedModel:
    try:
        import tflite
    except ImportError:
        raise QCompileError(f"{path}: TFLite models need the tflite package: pip install 'qcompile[tflite]'") from None
    from tvm import relax
    from tvm.relax.frontend.tflite import from_tflite
    from tvm.relax.frontend.tflite.tflite_frontend import ExprTable, OperatorConverter, _decode_type

    buf = path.read_bytes()
    if buf[4:8] != b"TFL3":
        raise QCompileError(f"{path}: not a TFLite model (no TFL3 identifier)")
    try:
        model = tflite.Model.GetRootAsModel(buf, 0)
        subgraph = model.Subgraphs(0)
        converter = OperatorConverter(model, subgraph, ExprTable(), relax.BlockBuilder())
        ops = []
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            ops.append((_op_code(converter, model, op), _tensor_name(subgraph, op.Outputs(0)) if op.OutputsLength() else f"#{i}"))
        inputs_idx = list(subgraph.InputsAsNumpy())
        outputs_idx = list(subgraph.OutputsAsNumpy())
        raw_inputs = [(_tensor_name(subgraph, i), list(subgraph.Tensors(i).ShapeAsNumpy()), _decode_type(subgraph.Tensors(i).Type()))
                      for i in inputs_idx]
    except Exception as err:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere
        raise QCompileError(f"{path}: not a valid TFLite model ({last_line(err)})") from None
    raise_unsupported(str(path), ((code, name) for code, name in ops if code not in converter.convert_map))
    check_input_names(str(path), [name for name, _, _ in raw_inputs], input_shapes)
    inputs = [TensorInfo(name, resolve_shape(str(path), name, [int(d) for d in dims], input_shapes), dtype)
              for name, dims, dtype in raw_inputs]
    try:
        mod = from_tflite(model, shape_dict={t.name: t.shape for t in inputs}, dtype_dict={t.name: t.dtype for t in inputs},
                          op_converter=_converter_class())
    except Exception as err:  # noqa: BLE001
        raise QCompileError(f"{path}: TFLite import failed: {last_line(err)}") from None
    # Weights are already constants in the body; the "params" copy would only bloat the artifact.
    mod["main"] = mod["main"].without_attr("params")
    outputs = output_infos(mod, [_tensor_name(subgraph, i) for i in outputs_idx])
    layer_names = [name for code, name in ops if code in COMPUTE_OPS]
    return ImportedModel(mod, inputs, outputs, str(path), "tflite", layer_names)
