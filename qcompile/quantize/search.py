"""search: one precision per layer group that minimises a cost (latency or bytes) under a bound
on the predicted output noise, as an integer linear program (multiple-choice knapsack):

    min  sum_g sum_p cost[g, p] x[g, p]
    s.t. sum_p x[g, p] = 1 for every group g,   sum_g sum_p noise[g, p] x[g, p] <= budget,   x binary

Noise is additive to first order (each layer's quantization error is small and independent), so
a group's noise and cost are the sums over its layers. Sweeping the budget traces the predicted
Pareto front; each candidate is then checked on the real metric (simulated, then built), since
additivity is only a prediction. Pure numpy/scipy: no TVM here."""

from __future__ import annotations

import itertools

import numpy as np

from .annotate import Plan


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


def group_tables(groups, allowed: dict, noise: dict, cost: dict):
    """Per group: the precisions every member allows, and the summed noise and cost of each."""
    options = []
    for g in groups:
        common = [p for p in allowed[g[0]] if all(p in allowed[n] for n in g)]
        options.append({p: (sum(noise[n][p] for n in g), sum(cost[n][p] for n in g)) for p in common})
    return options


def solve(groups, options, budget: float) -> dict[str, str] | None:
    """The cheapest configuration whose summed noise is within `budget` (None if none is)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    index = [(g, p) for g, opts in enumerate(options) for p in opts if opts[p][0] <= budget]
    if {g for g, _ in index} != set(range(len(groups))):
        return None
    c = np.array([options[g][p][1] for g, p in index], np.float64)
    noise = np.array([options[g][p][0] for g, p in index], np.float64)
    one_each = np.zeros((len(groups), len(index)))
    for j, (g, _) in enumerate(index):
        one_each[g, j] = 1.0
    limit = budget
    for _ in range(8):  # the solver's feasibility tolerance can overshoot a tiny budget: tighten, solve again
        constraints = [LinearConstraint(one_each, 1.0, 1.0), LinearConstraint(noise[None, :], -np.inf, limit)]
        result = milp(c, constraints=constraints, integrality=np.ones(len(index)), bounds=Bounds(0, 1),
                      options={"mip_rel_gap": 0.0})
        if not result.success:
            return None
        chosen = [index[j] for j in np.flatnonzero(result.x > 0.5)]
        total = sum(options[g][p][0] for g, p in chosen)
        if total <= budget * (1 + 1e-9):
            return {n: p for g, p in chosen for n in groups[g]}
        limit -= total - budget
    return None


def exhaustive(groups, options, budget: float) -> dict[str, str] | None:
    """The same optimum by enumerating every configuration (small models; a check of `solve`)."""
    best, best_cost = None, np.inf
    for choice in itertools.product(*[list(o) for o in options]):
        noise = sum(options[g][p][0] for g, p in enumerate(choice))
        cost = sum(options[g][p][1] for g, p in enumerate(choice))
        if noise <= budget * (1 + 1e-9) and cost < best_cost - 1e-12:
            best, best_cost = choice, cost
    if best is None:
        return None
    return {n: p for g, p in enumerate(best) for n in groups[g]}


def predicted(config: dict[str, str], noise: dict, cost: dict) -> tuple[float, float]:
    return sum(noise[n][p] for n, p in config.items()), sum(cost[n][p] for n, p in config.items())


def candidates(groups, options, steps: int = 16) -> list[dict[str, str]]:
    """The predicted Pareto front: `solve` over budgets from zero noise to the noisiest
    configuration, geometrically spaced; distinct configurations, least noisy first."""
    positive = [v[0] for o in options for v in o.values() if v[0] > 0]
    if not positive:
        return [solve(groups, options, 0.0)]
    top = sum(max(v[0] for v in o.values()) for o in options)
    budgets = [0.0, *np.geomspace(min(positive), top, steps)]
    seen, out = set(), []
    for b in budgets:
        config = solve(groups, options, float(b))
        key = tuple(sorted(config.items())) if config else None
        if config and key not in seen:
            seen.add(key)
            out.append(config)
    return out
