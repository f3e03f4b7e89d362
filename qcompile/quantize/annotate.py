"""annotate: decide which ops compute in int8 and mark the tensors to calibrate.

The float graph is first grouped into quantizable nodes (a compute op with its bias/activation
epilogue, a binary op, a reduction, a concat, or a chain of elementwise ops over one tensor that
becomes a lookup table). Every activation input of a quantized node is marked with an observe
marker; ops the policy skips, ops with no integer form, lookup tables no int8 node reads, and
non-compute nodes (concat, add, reduction) that only the model's outputs read stay float islands
(their inputs are left unmarked, so a float consumer reads the unquantized tensor)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tvm import relax

from ..ir import (
    is_const,
    is_scalar_const,
    is_var,
    main_bindings,
    observe,
    op_name,
    rewrite_main,
    substitute,
    tensor_dtype,
    vars_in,
)
from ..layers import compute_layer_names
from ..ops import BINARY, COMPUTE, CONCAT, ELEMENTWISE, EPILOGUE, REDUCE, moves_values, short_name


@dataclass
class Policy:
    """What to leave in float: layers by name (as the report lists them) or ops by short name
    ("conv2d", "matmul", "add", "multiply", "mean", "concat", "elementwise")."""
    skip_layers: frozenset[str] = frozenset()
    skip_ops: frozenset[str] = frozenset()

    def skips(self, node: "QuantNode") -> bool:
        return node.name in self.skip_layers or node.op in self.skip_ops


@dataclass
class QuantNode:
    name: str
    op: str  # short op name, or "elementwise" for a lookup-table chain
    kind: str  # compute | binary | reduce | concat | elementwise
    inputs: list  # activation vars read by the node
    outputs: list  # vars the node produces for the rest of the graph
    members: list = field(default_factory=list)  # every binding var of the node
    quantized: bool = True


@dataclass
class Plan:
    nodes: list[QuantNode]
    sites: dict  # observed var -> site name
    source: dict  # var -> the var it passes through from (layout ops, max pooling)

    def site_of(self, var) -> str | None:
        return self.sites.get(self.source_of(var))

    def source_of(self, var):
        while var in self.source:
            var = self.source[var]
        return var


def _is_float_tensor(expr) -> bool:
    return tensor_dtype(expr) in ("float32", "float16")


def _users(mod) -> tuple[dict, set]:
    users: dict = {}
    for var, value in main_bindings(mod):
        for a in vars_in(value):
            users.setdefault(a, []).append(var)
    result = mod["main"].body.body
    returned = set(result.fields) if isinstance(result, relax.Tuple) else {result}
    return users, returned


def _epilogue(start, defs, users, returned) -> list:
    """Single-use bindings after `start` that stay exact on an int32 accumulator."""
    chain, cur = [], start
    while cur not in returned and len(users.get(cur, [])) == 1:
        nxt = users[cur][0]
        value = defs[nxt]
        op = op_name(value)
        if op not in EPILOGUE or not value.args[0].same_as(cur):
            break
        if op in ("add", "subtract") and not is_const(value.args[1]):
            break
        chain.append(nxt)
        cur = nxt
    return chain


def _table_arg(arg) -> bool:
    """A lookup table can absorb variables, scalar constants and attributes (clip bounds)."""
    if is_var(arg):
        return True
    if is_const(arg):
        return is_scalar_const(arg)
    return not isinstance(getattr(arg, "ty", None), relax.TensorType)


def _is_elementwise(value) -> bool:
    return op_name(value) in ELEMENTWISE and _is_float_tensor(value) and all(_table_arg(a) for a in value.args)


def plan(mod, layer_names: list[str] | None = None, policy: Policy | None = None) -> Plan:
    """Group `main` into quantizable nodes and choose the tensors to observe."""
    policy = policy or Policy()
    bindings = list(main_bindings(mod))
    defs = dict(bindings)
    users, returned = _users(mod)
    layer_of = compute_layer_names(mod, layer_names)
    claimed: set = set()
    nodes: list[QuantNode] = []
    counters: dict[str, int] = {}
    root: dict = {}  # elementwise member -> the tensor its chain starts from
    source: dict = {}

    def fresh(op: str) -> str:
        counters[op] = counters.get(op, 0) + 1
        return f"{op}_{counters[op] - 1}"

    for var, value in bindings:
        op = op_name(value)
        if var in claimed or not isinstance(value, relax.Call) or not _is_float_tensor(value):
            continue
        args = value.args
        if moves_values(op, value.attrs) and is_var(args[0]):
            source[var] = args[0]
            continue
        if op in COMPUTE and is_var(args[0]) and (is_const(args[1]) or (op == "matmul" and is_var(args[1]))):
            chain = _epilogue(var, defs, users, returned)
            claimed.update(chain)
            inputs = [a for a in args[:2] if is_var(a)]
            nodes.append(QuantNode(layer_of[var], short_name(op), "compute", inputs,
                                   [chain[-1] if chain else var], [var, *chain]))
            continue
        if _is_elementwise(value):
            roots = {root.get(a, a) for a in vars_in(value)}
            if len(roots) == 1:
                root[var] = roots.pop()
                continue
        if op in BINARY and all(is_var(a) for a in args[:2]):
            chain = _epilogue(var, defs, users, returned)
            claimed.update(chain)
            nodes.append(QuantNode(fresh(op), op, "binary", list(args[:2]), [chain[-1] if chain else var],
                                   [var, *chain]))
        elif op in REDUCE and is_var(args[0]):
            nodes.append(QuantNode(fresh(op), op, "reduce", [args[0]], [var], [var]))
        elif op in CONCAT and isinstance(args[0], relax.Tuple) and all(is_var(f) for f in args[0].fields):
            nodes.append(QuantNode(fresh(op), op, "concat", list(args[0].fields), [var], [var]))

    # Elementwise chains: one node per root, its outputs the members read from outside the chain.
    chains: dict = {}
    for member, r in root.items():
        chains.setdefault(r, []).append(member)
    for r, members in chains.items():
        member_set = set(members)
        outputs = [m for m in members if m in returned or any(u not in member_set for u in users.get(m, []))]
        nodes.append(QuantNode(fresh("elementwise"), "elementwise", "elementwise", [r], outputs, members))

    sites: dict = {}
    plan_ = Plan(nodes, sites, source)
    for node in nodes:
        node.quantized = not policy.skips(node)
    # A lookup table only pays when an int8 node reads it; a concat, add or reduction that only the
    # model's outputs read (through layout ops) pays nothing either: it stays float and reads the
    # layers' int32 results unrounded. A detector's score concat, requantized to one int8 scale over
    # logits from -365 to 2, lost most decisions at 0 (BlazeFace: decision F1 0.48 against float's, 0.86 so).
    passing = set(source) | {v for v, value in bindings if isinstance(value, (relax.Var, relax.Tuple))}
    terminal = set(returned)  # vars only the model's outputs read, through layout ops (or aliases, tuples)
    for var, _ in reversed(bindings):
        if var not in terminal and users.get(var) and all(u in terminal and u in passing for u in users[var]):
            terminal.add(var)
    read_by_integer = {plan_.source_of(v) for n in nodes if n.quantized and n.kind != "elementwise" for v in n.inputs}
    for node in nodes:
        unread = not any(out in read_by_integer for out in node.outputs)
        if node.kind != "compute" and unread and \
                (node.kind == "elementwise" or all(o in terminal for o in node.outputs)):
            node.quantized = False
    producer = {out: n.name for n in nodes for out in n.outputs}
    for node in nodes:
        if not node.quantized:
            continue
        for var in node.inputs:
            src = plan_.source_of(var)
            if src not in sites:
                base = f"{producer[src]}.out" if src in producer else var_name(src)
                sites[src] = base if base not in sites.values() else f"{base}#{len(sites)}"
    return plan_


def var_name(var) -> str:
    return str(var.name)


def annotate(mod, layer_names: list[str] | None = None, policy: Policy | None = None, planned: Plan | None = None):
    """The Annotate pass: `mod` with an observe marker after every tensor a quantized node reads.
    Bindings of float islands keep reading the unmarked tensors. `planned`: plan(mod, ...) if
    the caller already has it."""
    p = planned or plan(mod, layer_names, policy)
    float_bindings = {m for n in p.nodes if not n.quantized for m in n.members}
    plain: dict = {}

    def marked(bb, var, emitted):
        site = p.sites.get(var)
        return bb.emit(observe(emitted, site), f"{var_name(var)}_obs") if site else emitted

    def start(bb, params):
        plain.update({v: v for v in params})
        return {v: marked(bb, v, v) for v in params}

    originals = dict(main_bindings(mod))

    def rule(bb, var, value):
        if var in float_bindings:
            value = substitute(originals[var], plain)
        emitted = value if is_var(value) or is_const(value) else bb.emit(value, var_name(var))
        plain[var] = emitted
        return marked(bb, var, emitted)

    return rewrite_main(mod, rule, start=start)
