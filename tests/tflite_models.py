"""Small TFLite flatbuffers the tests build themselves with the `tflite` package's builders."""

from __future__ import annotations

import importlib

import flatbuffers
import numpy as np
import tflite

# The generated builder functions live in the modules, which tflite/__init__ shadows with classes.
Buffer, FullyConnectedOptions, Model, Operator, OperatorCode, SubGraph, Tensor = (
    importlib.import_module(f"tflite.{name}")
    for name in ("Buffer", "FullyConnectedOptions", "Model", "Operator", "OperatorCode", "SubGraph", "Tensor")
)

FLOAT32 = tflite.TensorType.FLOAT32


def dense_relu_model(unsupported_op: str | None = None) -> tuple[bytes, dict]:
    """y = relu(x @ W.T + b), x[1,8] -> y[1,4]; optionally followed by an op TVM lacks."""
    rng = np.random.default_rng(3)
    weights = {"W": rng.standard_normal((4, 8)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    b = flatbuffers.Builder(1024)

    def vector(start, items, prepend):
        start(b, len(items))
        for item in reversed(items):
            prepend(item)
        return b.EndVector()

    buffers = []
    for data in [None, None, weights["W"].tobytes(), weights["b"].tobytes(), None, None]:
        vec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        Buffer.BufferStart(b)
        if vec is not None:
            Buffer.BufferAddData(b, vec)
        buffers.append(Buffer.BufferEnd(b))

    specs = [("x", [1, 8], 1), ("W", [4, 8], 2), ("b", [4], 3), ("y", [1, 4], 4), ("z", [1, 4], 5)]
    tensors = []
    for name, shape, buf in specs:
        name_off, shape_off = b.CreateString(name), b.CreateNumpyVector(np.array(shape, np.int32))
        Tensor.TensorStart(b)
        Tensor.TensorAddName(b, name_off)
        Tensor.TensorAddShape(b, shape_off)
        Tensor.TensorAddType(b, FLOAT32)
        Tensor.TensorAddBuffer(b, buf)
        tensors.append(Tensor.TensorEnd(b))

    FullyConnectedOptions.FullyConnectedOptionsStart(b)
    FullyConnectedOptions.FullyConnectedOptionsAddFusedActivationFunction(b, tflite.ActivationFunctionType.RELU)
    fc_options = FullyConnectedOptions.FullyConnectedOptionsEnd(b)

    op_specs = [(0, [0, 1, 2], [3], fc_options)]
    codes = [tflite.BuiltinOperator.FULLY_CONNECTED]
    if unsupported_op:
        codes.append(getattr(tflite.BuiltinOperator, unsupported_op))
        op_specs.append((1, [3], [4], None))
    operators = []
    for code_index, ins, outs, options in op_specs:
        ins_off, outs_off = b.CreateNumpyVector(np.array(ins, np.int32)), b.CreateNumpyVector(np.array(outs, np.int32))
        Operator.OperatorStart(b)
        Operator.OperatorAddOpcodeIndex(b, code_index)
        Operator.OperatorAddInputs(b, ins_off)
        Operator.OperatorAddOutputs(b, outs_off)
        if options is not None:
            Operator.OperatorAddBuiltinOptionsType(b, tflite.BuiltinOptions.FullyConnectedOptions)
            Operator.OperatorAddBuiltinOptions(b, options)
        operators.append(Operator.OperatorEnd(b))

    out_index = 4 if unsupported_op else 3
    tensors_vec = vector(SubGraph.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
    inputs_vec = b.CreateNumpyVector(np.array([0], np.int32))
    outputs_vec = b.CreateNumpyVector(np.array([out_index], np.int32))
    ops_vec = vector(SubGraph.SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, tensors_vec)
    SubGraph.SubGraphAddInputs(b, inputs_vec)
    SubGraph.SubGraphAddOutputs(b, outputs_vec)
    SubGraph.SubGraphAddOperators(b, ops_vec)
    subgraph = SubGraph.SubGraphEnd(b)

    code_offsets = []
    for code in codes:
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        code_offsets.append(OperatorCode.OperatorCodeEnd(b))

    codes_vec = vector(Model.ModelStartOperatorCodesVector, code_offsets, b.PrependUOffsetTRelative)
    subgraphs_vec = vector(Model.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    buffers_vec = vector(Model.ModelStartBuffersVector, buffers, b.PrependUOffsetTRelative)
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, codes_vec)
    Model.ModelAddSubgraphs(b, subgraphs_vec)
    Model.ModelAddBuffers(b, buffers_vec)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output()), weights
