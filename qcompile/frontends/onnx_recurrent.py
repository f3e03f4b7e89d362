"""Unroll ONNX LSTM / GRU / RNN nodes into MatMul, Gather, Slice, Sigmoid, Tanh, Mul, Add, Concat and
Reshape, which TVM's Relax ONNX importer converts (it has no converter for the recurrent ops).

The sequence length must be static and the weights constant; the batch may stay symbolic. The input
projection of all time steps is one MatMul per direction against a new, pre-transposed initializer,
then each step is one MatMul against the transposed recurrence weights, so a quantizer sees constant
weights everywhere."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import QCompileError

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}  # the ones without alpha/beta


def unroll_recurrent(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """A copy of `model` with every LSTM / GRU / RNN node of its main graph unrolled over time; the
    model itself when it has none. Raises QCompileError for what cannot be unrolled."""
    if not any(_is_recurrent(n) for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(out).graph
    except Exception:  # a model over 2 GiB, or one shape inference rejects: use the shapes it declares
        inferred = graph
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.input, *inferred.value_info, *inferred.output]
              if vi.type.tensor_type.HasField("shape")}
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    shapes.update((name, list(value.shape)) for name, value in consts.items())
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 1)
    used = _used_names(graph)
    taken = used | {n.name for n in graph.node} | {o for n in graph.node for o in n.output} | set(consts)
    taken |= {vi.name for vi in [*graph.input, *graph.value_info]}

    nodes, inits, consumed = [], [], set()
    for i, node in enumerate(graph.node):
        if not _is_recurrent(node):
            nodes.append(node)
            continue
        b = _Builder(node.name or f"{node.op_type}_{i}", taken, opset)
        _unroll(node, b, f"{source}: node '{node.name or f'#{i}'}' ({node.op_type})", shapes, consts, used)
        nodes += b.nodes
        inits += b.inits
        consumed.update(n for n in node.input[1:] if n in consts)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)

    # the original weights, now used by nothing
    used = _used_names(graph)
    dead = consumed - used
    for field in (graph.initializer, graph.input):
        kept = [x for x in field if x.name not in dead]
        del field[:]
        field.extend(kept)
    kept = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in dead)]
    del graph.node[:]
    graph.node.extend(kept)
    return out


def _is_recurrent(node) -> bool:
    return node.op_type in GATES and node.domain in ("", "ai.onnx")


def _used_names(graph) -> set[str]:
    """Every tensor name some node reads (subgraphs included: they may read outer names) or the graph outputs."""
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else attr.graphs:
                used |= _used_names(g)
    return used - {""}


class _Builder:
    """Appends nodes and initializers whose names start with the recurrent node's name."""

    def __init__(self, prefix: str, taken: set[str], opset: int):
        self.prefix, self.taken, self.opset = prefix, taken, opset
        self.nodes, self.inits, self._cache = [], [], {}

    def name(self, hint: str) -> str:
        base = name = f"{self.prefix}/{hint}"
        k = 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name

    def const(self, value, hint: str = "const") -> str:
        arr = np.asarray(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._cache:
            self._cache[key] = self.name(hint)
            self.inits.append(numpy_helper.from_array(arr, self._cache[key]))
        return self._cache[key]

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        name = self.name(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out or name], name=name, **attrs))
        return out or name

    def add(self, a, b):
        return b if a is None else a if b is None else self.op("Add", a, b)

    def mul(self, a, b):
        return None if a is None or b is None else self.op("Mul", a, b)

    def matmul(self, a, weight_name):
        return None if a is None else self.op("MatMul", a, weight_name)

    def reshape(self, x, shape, out=None):
        return self.op("Reshape", x, self.const(np.array(shape, np.int64), "shape"), out=out)

    def slice(self, x, start, end):
        """x[:, start:end] (Slice with constant inputs: the same from opset 10 on)."""
        if x is None:
            return None
        if self.opset < 10:
            return self.op("Slice", x, starts=[start], ends=[end], axes=[1])
        return self.op("Slice", x, *(self.const(np.array([v], np.int64), "index") for v in (start, end, 1)))

    def clip(self, x, clip, dtype):
        if clip is None:
            return x
        if self.opset < 11:
            return self.op("Clip", x, min=-clip, max=clip)
        return self.op("Clip", x, self.const(np.array(-clip, dtype), "clip_min"),
                       self.const(np.array(clip, dtype), "clip_max"))


def _unroll(node, b: _Builder, where: str, shapes, consts, used) -> None:
    op = node.op_type

    def fail(why: str):
        raise QCompileError(f"{where}: {why}")

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    names = list(node.input) + [""] * (8 - len(node.input))
    x, w_name, r_name, b_name, lens_name, h0_name, c0_name, p_name = names
    layout = attrs.get("layout", 0)
    direction = attrs.get("direction", b"forward").decode()
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if directions is None:
        fail(f"direction '{direction}' is not forward, reverse or bidirectional")
    ndir = len(directions)

    def constant(name, what, required=False):
        if not name:
            if required:
                fail(f"it has no {what}")
            return None
        if name not in consts:
            fail(f"its {what} '{name}' is not a constant (an initializer or a Constant node's output)")
        return consts[name]

    W, R = constant(w_name, "weight W", True), constant(r_name, "recurrence weight R", True)
    B, P = constant(b_name, "bias B"), constant(p_name, "peephole P")
    if P is not None and not P.any():
        P = None
    gates, hidden = GATES[op], R.shape[-1] if R.ndim else 0
    if (W.ndim != 3 or W.shape[:2] != (ndir, gates * hidden) or R.shape != (ndir, gates * hidden, hidden)
            or (B is not None and B.shape != (ndir, 2 * gates * hidden))
            or (P is not None and P.shape != (ndir, 3 * hidden))):
        fail(f"its weight shapes W {list(W.shape)}, R {list(R.shape)} do not fit {ndir} direction(s) of {gates} "
             "gate(s) (or B, P do not fit them)")
    x_shape = shapes.get(x)
    seq = x_shape[layout] if x_shape and len(x_shape) == 3 else None
    if not seq:
        fail("its sequence length is not static; give the input shapes with --input-shape")
    if lens_name:
        lens = consts.get(lens_name)
        if lens is None or not np.all(lens == seq):
            fail(f"its sequence_lens must be a constant equal to the full length {seq} (padded sequences are "
                 "not supported)")
    acts = [a.decode().lower() for a in attrs.get("activations", [])] or DEFAULT_ACTIVATIONS[op] * ndir
    if len(acts) != len(DEFAULT_ACTIVATIONS[op]) * ndir or any(a not in ACTIVATIONS for a in acts):
        fail(f"its activations {acts} are not supported (only Sigmoid, Tanh and Relu, one set per direction)")
    clip = attrs.get("clip")
    dtype = W.dtype
    lbr = op == "GRU" and attrs.get("linear_before_reset", 0)

    def initial(name, d):
        """The initial state of direction d as [batch, hidden] (it may be a graph input); None for zeros."""
        if not name or (name in consts and not consts[name].any()):
            return None
        return b.op("Gather", name, b.const(np.array(d, np.int64), "index"), axis=layout)

    want = [i < len(node.output) and node.output[i] in used for i in range(3)]
    ys, y_h, y_c = [], [], []
    for d, reverse in enumerate(directions):
        act = [ACTIVATIONS[a] for a in acts[d * len(acts) // ndir:(d + 1) * len(acts) // ndir]]
        tag = "reverse" if reverse else "forward"
        proj = b.op("MatMul", x, b.const(W[d].T, f"{tag}_W"))
        rec_bias = None
        if B is not None:
            # Wb and Rb add up before the activations, except Rbh with linear_before_reset: r * (h Rh^T + Rbh)
            wb, rb = B[d, :gates * hidden], B[d, gates * hidden:]
            if lbr:
                rec_bias = b.const(rb[2 * hidden:], f"{tag}_Rbh")
                rb = np.concatenate([rb[:2 * hidden], np.zeros(hidden, rb.dtype)])
            proj = b.op("Add", proj, b.const(wb + rb, f"{tag}_bias"))
        h, c = initial(h0_name, d), initial(c0_name, d)
        hs = [None] * seq
        steps = list(reversed(range(seq)) if reverse else range(seq))
        for t in steps:
            xt = b.op("Gather", proj, b.const(np.array(t, np.int64), "index"), axis=layout)
            if op == "RNN":
                h = b.op(act[0], b.clip(b.add(xt, b.matmul(h, b.const(R[d].T, f"{tag}_R"))), clip, dtype))
            elif op == "LSTM":
                need_h = t != steps[-1] or want[0] or want[1]  # not when only Y_c is read
                h, c = _lstm_step(b, xt, h, c, R[d], None if P is None else P[d], act, clip,
                                  attrs.get("input_forget", 0), tag, need_h)
            else:
                h = _gru_step(b, xt, h, R[d], rec_bias, lbr, act, clip, tag)
            hs[t] = h
        ys.append(hs)
        y_h.append(h)
        y_c.append(c)

    out = list(node.output) + [""] * 3
    if want[0]:
        _stack(b, [ys[d][t] for t in range(seq) for d in range(ndir)], (seq, ndir), hidden, layout, out[0])
    if want[1]:
        _stack(b, y_h, (ndir,), hidden, layout, out[1])
    if want[2]:
        _stack(b, y_c, (ndir,), hidden, layout, out[2])


def _lstm_step(b: _Builder, xt, h, c, R, P, act, clip, input_forget, tag, need_h):
    hidden, dtype = R.shape[1], R.dtype
    pre = b.add(xt, b.matmul(h, b.const(R.T, f"{tag}_R")))

    def gate(k):  # order i, o, f, c
        return b.slice(pre, k * hidden, (k + 1) * hidden)

    def peephole(k, state):  # order i, o, f
        return None if P is None else b.mul(state, b.const(P[k * hidden:(k + 1) * hidden], f"{tag}_P"))

    i = b.op(act[0], b.clip(b.add(gate(0), peephole(0, c)), clip, dtype))
    f = None
    if c is not None:  # else the forget gate multiplies zeros
        f = (b.op("Sub", b.const(np.array(1, dtype), "one"), i) if input_forget
             else b.op(act[0], b.clip(b.add(gate(2), peephole(2, c)), clip, dtype)))
    c = b.add(b.mul(f, c), b.mul(i, b.op(act[1], b.clip(gate(3), clip, dtype))))
    if not need_h:
        return None, c
    o = b.op(act[0], b.clip(b.add(gate(1), peephole(1, c)), clip, dtype))
    return b.mul(o, b.op(act[2], c)), c


def _gru_step(b: _Builder, xt, h, R, rec_bias, lbr, act, clip, tag):
    hidden, dtype = R.shape[1], R.dtype
    x_zr, x_h = b.slice(xt, 0, 2 * hidden), b.slice(xt, 2 * hidden, 3 * hidden)
    if lbr:
        rec = b.matmul(h, b.const(R.T, f"{tag}_R"))
        rec_zr, gated = b.slice(rec, 0, 2 * hidden), b.add(b.slice(rec, 2 * hidden, 3 * hidden), rec_bias)
    else:
        rec_zr, gated = b.matmul(h, b.const(R[:2 * hidden].T, f"{tag}_Rzr")), h
    pre_zr = b.clip(b.add(x_zr, rec_zr), clip, dtype)
    z = b.op(act[0], b.slice(pre_zr, 0, hidden))
    if gated is not None:  # else the reset gate multiplies zeros
        r = b.op(act[0], b.slice(pre_zr, hidden, 2 * hidden))
        gated = b.mul(r, gated) if lbr else b.matmul(b.mul(r, h), b.const(R[2 * hidden:].T, f"{tag}_Rh"))
    hh = b.op(act[1], b.clip(b.add(x_h, gated), clip, dtype))
    return b.add(b.mul(b.op("Sub", b.const(np.array(1, dtype), "one"), z), hh), b.mul(z, h))


def _stack(b: _Builder, tensors, lead, hidden, layout, out):
    """[batch, hidden] tensors in the order of the leading dims `lead` into one tensor named `out`:
    [*lead, batch, hidden] for layout 0, [batch, *lead, hidden] for layout 1."""
    shape = [*lead, -1, hidden] if layout == 0 else [-1, *lead, hidden]
    if len(tensors) == 1:
        return b.reshape(tensors[0], shape, out)
    if layout == 1:
        tensors = [b.reshape(t, [-1, 1, hidden]) for t in tensors]
    return b.reshape(b.op("Concat", *tensors, axis=layout), shape, out)
