"""search: one precision per layer group that minimises a cost (latency or bytes) under a bound
on the predicted output noise, as an integer linear program (multiple-choice knapsack):

    min  sum_g sum_p cost[g, p] x[g, p]  +  sum_e dq[e] up[e] + q[e] down[e]
    s.t. sum_p x[g, p] = 1 for every group g,   sum_g sum_p noise[g, p] x[g, p] <= budget,   x binary
         up[e] >= int[a] - int[b],   down[e] >= int[b] - int[a]   for every edge e = (a -> b)

where int[g] = sum of x[g, p] over the integer precisions. An edge joins two layers that a path of
other ops connects; it costs a dequantize (dq) where an integer layer feeds a float one and a
quantize (q) the other way round, and nothing where both sides are integer (the tensor stays int8
between them). For latency these boundaries are what separates a chain of int8 layers from
int8 layers measured one at a time; for bytes there are no edges.

Noise is additive to first order (each layer's quantization error is small and independent), so
a group's noise and cost are the sums over its layers. Sweeping the budget traces the predicted
Pareto front; each candidate is then checked on the real metric (simulated, then built), since
additivity is only a prediction. Pure numpy/scipy: no TVM here."""

from __future__ import annotations

import itertools

import numpy as np

from .annotate import Plan

INTEGER = ("int4", "int8")  # precisions whose activations are int8 (int4 is a weight format)


def layer_groups(p: Plan, names: list[str]) -> list[list[str]]:
    """Layers whose outputs meet in one add, subtract or concat share a precision (so a residual
    sum never mixes an integer and a float operand); every other layer is a group of its own."""
    parent = {n: n for n in names}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    producer = {out: node.name for node in p.nodes for out in node.outputs}
    for node in p.nodes:
        if node.kind not in ("binary", "concat") or node.op == "multiply":
            continue
        members = [producer.get(p.source_of(v)) for v in node.inputs]
        members = [m for m in members if m in parent]
        for a, b in zip(members, members[1:]):
            parent[find(a)] = find(b)
    groups: dict = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def layer_edges(p: Plan, names: list[str]) -> list[tuple[str, str]]:
    """(producer, consumer) pairs of the compute layers `names` that a path through other nodes
    (pooling, adds, tables, layout ops) connects, in program order."""
    producer = {out: node for node in p.nodes for out in node.outputs}
    compute = set(names)

    def sources(var, seen) -> set:
        node = producer.get(p.source_of(var))
        if node is None or node.name in seen:
            return set()  # a model input, a constant, or a node already walked
        if node.name in compute:
            return {node.name}
        seen.add(node.name)
        return set().union(*(sources(v, seen) for v in node.inputs))

    edges = []
    for node in p.nodes:
        if node.name in compute:
            edges += [(a, node.name) for a in sorted(set().union(*(sources(v, set()) for v in node.inputs)))]
    return edges


def group_tables(groups, allowed: dict, noise: dict, cost: dict):
    """Per group: the precisions every member allows, and the summed noise and cost of each."""
    options = []
    for g in groups:
        common = [p for p in allowed[g[0]] if all(p in allowed[n] for n in g)]
        options.append({p: (sum(noise[n][p] for n in g), sum(cost[n][p] for n in g)) for p in common})
    return options


def _group_edges(groups, edges) -> list[tuple[int, int, float, float]]:
    """`edges` (a, b, dq cost, q cost) between layers, as edges between their groups (inner ones dropped)."""
    group_of = {n: g for g, members in enumerate(groups) for n in members}
    return [(group_of[a], group_of[b], dq, q) for a, b, dq, q in edges if group_of[a] != group_of[b]]


def edge_cost(config: dict[str, str], edges) -> float:
    """The quantize/dequantize cost of `config` at its integer/float boundaries."""
    total = 0.0
    for a, b, dq, q in edges:
        a_int, b_int = config[a] in INTEGER, config[b] in INTEGER
        total += dq if a_int and not b_int else q if b_int and not a_int else 0.0
    return total


def solve(groups, options, budget: float, edges=()) -> dict[str, str] | None:
    """The cheapest configuration whose summed noise is within `budget` (None if none is).
    `edges`: (producer, consumer, dequantize cost, quantize cost) between layers (layer_edges)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    index = [(g, p) for g, opts in enumerate(options) for p in opts if opts[p][0] <= budget]
    if {g for g, _ in index} != set(range(len(groups))):
        return None
    gedges = _group_edges(groups, edges)
    n, m = len(index), 2 * len(gedges)  # x, then (up, down) per edge
    c = np.array([options[g][p][1] for g, p in index] + [w for _, _, dq, q in gedges for w in (dq, q)], np.float64)
    noise = np.zeros(n + m)
    noise[:n] = [options[g][p][0] for g, p in index]
    one_each = np.zeros((len(groups), n + m))
    is_int = np.zeros((len(groups), n + m))
    for j, (g, p) in enumerate(index):
        one_each[g, j] = 1.0
        is_int[g, j] = float(p in INTEGER)
    linking = np.zeros((m, n + m))
    for e, (a, b, _, _) in enumerate(gedges):
        linking[2 * e] = is_int[b] - is_int[a]  # up >= int[a] - int[b]
        linking[2 * e + 1] = is_int[a] - is_int[b]  # down >= int[b] - int[a]
        linking[2 * e, n + 2 * e] = linking[2 * e + 1, n + 2 * e + 1] = 1.0
    integrality = np.r_[np.ones(n), np.zeros(m)]
    limit = budget
    for _ in range(8):  # the solver's feasibility tolerance can overshoot a tiny budget: tighten, solve again
        constraints = [LinearConstraint(one_each, 1.0, 1.0), LinearConstraint(noise[None, :], -np.inf, limit)]
        if m:
            constraints.append(LinearConstraint(linking, 0.0, np.inf))
        result = milp(c, constraints=constraints, integrality=integrality, bounds=Bounds(0, 1),
                      options={"mip_rel_gap": 0.0})
        if not result.success:
            return None
        chosen = [index[j] for j in np.flatnonzero(result.x[:n] > 0.5)]
        total = sum(options[g][p][0] for g, p in chosen)
        if total <= budget * (1 + 1e-9):
            return {n: p for g, p in chosen for n in groups[g]}
        limit -= total - budget
    return None


def exhaustive(groups, options, budget: float, edges=()) -> dict[str, str] | None:
    """The same optimum by enumerating every configuration (small models; a check of `solve`)."""
    best, best_cost = None, np.inf
    gedges = _group_edges(groups, edges)
    for choice in itertools.product(*[list(o) for o in options]):
        noise = sum(options[g][p][0] for g, p in enumerate(choice))
        cost = sum(options[g][p][1] for g, p in enumerate(choice)) + edge_cost(dict(enumerate(choice)), gedges)
        if noise <= budget * (1 + 1e-9) and cost < best_cost - 1e-12:
            best, best_cost = choice, cost
    if best is None:
        return None
    return {n: p for g, p in enumerate(best) for n in groups[g]}


def predicted(config: dict[str, str], noise: dict, cost: dict, edges=()) -> tuple[float, float]:
    return (sum(noise[n][p] for n, p in config.items()),
            sum(cost[n][p] for n, p in config.items()) + edge_cost(config, edges))


def candidates(groups, options, steps: int = 16, edges=()) -> list[dict[str, str]]:
    """The predicted Pareto front: `solve` over budgets from zero noise to the noisiest
    configuration, geometrically spaced; distinct configurations, least noisy first."""
    positive = [v[0] for o in options for v in o.values() if v[0] > 0]
    if not positive:
        return [solve(groups, options, 0.0, edges)]
    top = sum(max(v[0] for v in o.values()) for o in options)
    budgets = [0.0, *np.geomspace(min(positive), top, steps)]
    seen, out = set(), []
    for b in budgets:
        config = solve(groups, options, float(b), edges)
        key = tuple(sorted(config.items())) if config else None
        if config and key not in seen:
            seen.add(key)
            out.append(config)
    return out
