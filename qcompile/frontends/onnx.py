"""ONNX frontend: ONNX file (with external data, or weights in Constant nodes) -> Relax."""

from __future__ import annotations

import contextlib
import gc
import heapq
import io
import re
import warnings
from pathlib import Path

from ..errors import QCompileError, last_line
from .common import (
    ImportedModel,
    TensorInfo,
    check_input_names,
    frozen_value,
    output_infos,
    raise_unsupported,
    resolve_shape,
)
from .onnx_recurrent import GATES as RECURRENT
from .onnx_recurrent import unroll_recurrent

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


def _node_name(node, i: int) -> str:
    return f"node '{node.name or f'#{i}'}' ({node.op_type})"


def check_opset(path: Path, model) -> None:
    """Refuse a default-domain opset newer than TVM's importer implements: it would pick older
    converters silently."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    newest = max(int(m.group(1)) for c in _get_convert_map().values() for a in dir(c)
                 if (m := re.fullmatch(r"_impl_v(\d+)", a)))
    if opset is not None and opset > newest:
        raise QCompileError(f"{path}: ONNX opset {opset} is newer than TVM's importer supports (up to opset {newest}); "
                            f"export the model at opset {newest} or lower")


def check_graph(path: Path, model) -> None:
    """Every node input must be a graph input, an initializer or another node's output, and the
    nodes must form no cycle; TVM's importer fails on either with a KeyError and no node named."""
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    known = {vi.name for vi in model.graph.input} | {init.name for init in model.graph.initializer}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in known and name not in producer:
                raise QCompileError(f"{path}: {_node_name(node, i)}: its input '{name}' is not a graph input, "
                                    "an initializer or any node's output (a missing initializer?)")
    for out in model.graph.output:
        if out.name not in known and out.name not in producer:
            raise QCompileError(f"{path}: graph output '{out.name}' is produced by no node")
    # Kahn's order, earliest node first: nodes left over lie on a cycle or after one.
    deps = [{producer[n] for n in node.input if n in producer} for node in nodes]
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    waiting = [len(d) for d in deps]
    ready, order = [i for i, w in enumerate(waiting) if w == 0], []
    while ready:
        order.append(heapq.heappop(ready))
        for j in users.get(order[-1], []):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        left = set(range(len(nodes))) - set(order)
        walk, i = [], min(left)
        while i not in walk:  # step back through unfinished producers until a node repeats: a cycle
            walk.append(i)
            i = min(deps[i] & left)
        cycle = walk[walk.index(i):][::-1]
        raise QCompileError(f"{path}: the graph has a cycle: "
                            + " -> ".join(_node_name(nodes[j], j) for j in cycle + cycle[:1]))
    if order != list(range(len(nodes))):  # acyclic but out of order: ONNX forbids it, TVM's importer needs it
        del model.graph.node[:]
        model.graph.node.extend(nodes[i] for i in order)


OPERATOR_FORM = {"QLinearConv", "QLinearMatMul", "ConvInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                 "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu"}


def _operator_form_hint(ops: set) -> str | None:
    if not ops & OPERATOR_FORM:
        return None
    return ("a model quantized in operator form; qcompile takes QDQ models: quantize the float model with "
            "onnxruntime's quantize_static(..., quant_format=QuantFormat.QDQ), or build the float model "
            "with --quantize int8")


def unsupported_nodes(model):
    """(op, node name) for every node TVM's ONNX frontend cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"Constant", "If"} | set(RECURRENT)
    for i, node in enumerate(model.graph.node):
        standard = node.domain in ("", "ai.onnx")
        if node.op_type not in supported or not standard:
            yield (node.op_type if standard else f"{node.domain}.{node.op_type}"), node.name or f"#{i}"


def fold_constant_nodes(model):
    """Evaluate (with onnx's reference runtime) every node whose inputs are all constants, e.g.
    the pad-size arithmetic torch's exporter writes, which TVM's importer cannot take as data."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    known = {init.name for init in model.graph.initializer}
    graph_outputs = {o.name for o in model.graph.output}
    kept, new_inits = [], []
    values = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        inputs_known = node.op_type == "Constant" or (node.input and all(i in known for i in node.input if i))
        foldable = (node.domain in ("", "ai.onnx") and inputs_known
                    and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
                    and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                                             "Multinomial", "QuantizeLinear", "DequantizeLinear")
                    and not graph_outputs.intersection(node.output))
        if foldable:
            try:
                feeds = {i: numpy_helper.to_array(values[i]) for i in node.input if i}
                results = ReferenceEvaluator(node).run(None, feeds)
            except Exception:  # noqa: BLE001 - an op the reference runtime lacks stays in the graph
                results = None
            if results is not None:
                for name, value in zip(node.output, results):
                    init = numpy_helper.from_array(value, name)
                    values[name] = init
                    new_inits.append(init)
                    known.add(name)
                continue
        kept.append(node)
    if new_inits:
        del model.graph.node[:]
        model.graph.node.extend(kept)
        model.graph.initializer.extend(new_inits)
    return model


def fuse_pad_into_conv(model):
    """Pad(zeros, constant pads) -> Conv becomes one Conv with larger pads, as onnxoptimizer's
    pass of that name does (torch exports TF-style "same" padding this way)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producers = {out: node for node in model.graph.node for out in node.output}
    drop = set()
    for conv in model.graph.node:
        pad = producers.get(conv.input[0]) if conv.op_type == "Conv" and conv.input else None
        if pad is None or pad.op_type != "Pad" or uses.get(pad.output[0]) != 1 or len(pad.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
        mode = attrs.get("mode", b"constant")
        if (mode not in (b"constant", "constant") or pad.input[1] not in inits or (len(pad.input) > 2 and pad.input[2]
                and (pad.input[2] not in inits or numpy_helper.to_array(inits[pad.input[2]]).any()))
                or (len(pad.input) > 3 and pad.input[3])):
            continue
        pads = numpy_helper.to_array(inits[pad.input[1]]).astype(int).tolist()
        rank = len(pads) // 2
        begin, end = pads[:rank], pads[rank:]
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
        if begin[:2] != [0, 0] or end[:2] != [0, 0] or min(pads) < 0 or conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        old = list(conv_attrs.get("pads", [0] * (2 * (rank - 2))))
        spatial = rank - 2
        new = [old[i] + begin[2 + i] for i in range(spatial)] + [old[spatial + i] + end[2 + i] for i in range(spatial)]
        for a in list(conv.attribute):
            if a.name == "pads":
                conv.attribute.remove(a)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = pad.input[0]
        drop.add(id(pad))
    if drop:
        kept = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return model


def fix_input_shapes(model, inputs) -> None:
    """The resolved static shapes written into the graph's inputs, for the simplifier to fold with."""
    shapes = {t.name: t.shape for t in inputs}
    for vi in model.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)


def freeze_inputs(model, frozen: dict) -> None:
    """Inputs frozen by --input-value become initializers; a branch they select folds away."""
    from onnx import numpy_helper

    if not frozen:
        return
    kept = [vi for vi in model.graph.input if vi.name not in frozen]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in frozen.items())


def check_no_control_flow(path: Path, model) -> None:
    """An If left after folding branches on values known only at run time: qcompile's passes
    compile dataflow graphs (TVM's importer converts it, and its compilation fails inside TVM).
    The inputs its condition depends on are named, to be frozen with --input-value."""
    producer = {out: node for node in model.graph.node for out in node.output}
    graph_inputs = {vi.name for vi in model.graph.input}
    for i, node in enumerate(model.graph.node):
        if node.op_type not in ("If", "Loop", "Scan"):
            continue
        found, stack, seen = [], [node.input[0]] if node.input else [], set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in graph_inputs:
                found.append(name)
            elif name in producer:
                stack.extend(n for n in producer[name].input if n)
        hint = (f"its condition depends on input(s) {sorted(found)} at run time; freeze them with "
                f"--input-value (e.g. --input-value {sorted(found)[0]}=VALUE)" if found and node.op_type == "If"
                else "control flow is not compiled (qcompile compiles dataflow graphs)")
        raise QCompileError(f"{path}: {_node_name(node, i)}: {hint}")


def simplify(model):
    """The graph with its shape arithmetic (Shape -> Gather -> Concat -> Reshape, ConstantOfShape,
    Range...) folded to constants now that the input shapes are static, as TVM's importer needs:
    onnxslim's constant folding and shape inference (measured against onnxsim on the zoo, see
    benchmarks/results/zoo.md). A model onnxslim cannot take goes on as it is."""
    import onnxslim

    # The shapes a model declares for its outputs and intermediates are claims, often stale or
    # placeholders ([1, 'seqlen'] on an output that is [32, 1, 8210]); onnxslim folds a Reshape to
    # a declared shape (ddddocr came out [1, 262720]), so only the input shapes are kept.
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(model)
    except Exception:  # noqa: BLE001 - the simplifier is an improvement, never a new failure
        return model
    return slim if slim is not None else model


def load_onnx(path: Path, input_shapes: dict[str, list[int]], input_values: dict | None = None) -> ImportedModel:
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    model = read_onnx(path)
    check_opset(path, model)
    raise_unsupported(str(path), unsupported_nodes(model), _operator_form_hint)
    check_graph(path, model)
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    check_input_names(str(path), [vi.name for vi in graph_inputs], input_shapes)
    check_input_names(str(path), [vi.name for vi in graph_inputs], input_values or {}, "--input-value")
    inputs, frozen = [], {}
    for vi in graph_inputs:
        ttype = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in ttype.shape.dim]
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        if vi.name in (input_values or {}):
            frozen[vi.name] = frozen_value(str(path), vi.name, input_values[vi.name],
                                           input_shapes.get(vi.name, dims), dtype)
            continue
        inputs.append(TensorInfo(vi.name, resolve_shape(str(path), vi.name, dims, input_shapes), dtype))
    output_names = [o.name for o in model.graph.output]
    freeze_inputs(model, frozen)
    fix_input_shapes(model, inputs)
    model = simplify(model)
    check_no_control_flow(path, model)
    model = unroll_recurrent(model, str(path))
    model = fuse_pad_into_conv(fold_constant_nodes(model))
    printed, failure = io.StringIO(), None
    try:  # TVM's importer prints the op it failed on (captured for our one line) and warns onnx.checker's verdict
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.simplefilter("ignore")
            mod = from_onnx(
                model,
                shape_dict={t.name: list(t.shape) for t in inputs},
                dtype_dict={t.name: t.dtype for t in inputs},
                keep_params_in_input=False,
                sanitize_input_names=False,
            )
    except Exception as err:  # TVM raises many types; the user gets one line.
        op = re.search(r"Error converting operator (\S+),", printed.getvalue())
        failure = f"ONNX import failed{f' converting a {op.group(1)} node' if op else ''}: {last_line(err)}"
    if failure:
        # Raised here, not in the except: the failed importer is freed (and TVM's warning about its
        # unfinished blocks printed) now, before the error line rather than after it.
        gc.collect()
        raise QCompileError(f"{path}: {failure}")
    outputs = output_infos(mod, output_names)
    layer_names = [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node) if n.op_type in COMPUTE_NODES]
    return ImportedModel(mod, inputs, outputs, str(path), "onnx", layer_names, frozen)
