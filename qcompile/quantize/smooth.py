"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before calibration.

For a matmul x[..., K] @ W[K, N] with a constant weight, a per-input-channel factor s[K] gives the
same product as (x / s) @ (s[:, None] * W). With s_j = max|x_j|^alpha / max|W_j,:|^(1 - alpha)
(max|x_j| over the calibration data), channels where the activation has outliers are scaled down
and the weights' rows scaled up, so one int8 scale per activation tensor loses less. Matmuls that
read the same tensor share one s (its weights' row maxima taken together). Where that tensor is a
LayerNorm's output read only by such matmuls, 1/s folds into the LayerNorm's gamma and beta at no
cost; elsewhere x / s is a multiply before the matmuls."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import (
    const,
    const_value,
    emit_as_is,
    is_const,
    is_var,
    main_bindings,
    op_name,
    rewrite_main,
    tensor_dtype,
    vars_in,
)

S_RANGE = (1e-5, 1e5)


def _candidates(mod) -> dict:
    """activation var -> [matmul binding vars] for every float matmul x @ W (W a constant [K, N])."""
    groups: dict = {}
    for var, value in main_bindings(mod):
        if (op_name(value) == "matmul" and is_var(value.args[0]) and is_const(value.args[1])
                and tensor_dtype(value.args[0]) == "float32" and const_value(value.args[1]).ndim == 2):
            groups.setdefault(value.args[0], []).append(var)
    return groups


def channel_maxima(mod, batches: list[dict], input_names: list[str], engine) -> dict:
    """activation var -> max |x| per input channel (its last axis) over the calibration batches."""
    import tvm

    groups = _candidates(mod)
    if not groups:
        return {}
    xs = list(groups)
    emitted = {}  # activation var -> its re-emitted var (parameters are kept as they are)

    def rule(bb, var, value):
        emitted[var] = emit_as_is(bb, var, value)
        return emitted[var]

    def finish(bb, result):
        taps = [R.max(R.abs(emitted.get(x, x)), axis=list(range(len(x.ty.shape.values) - 1))) for x in xs]
        return relax.Tuple([result, relax.Tuple(taps)])

    vm = engine(rewrite_main(mod, rule, finish))
    maxima = [np.zeros(int(x.ty.shape.values[-1]), np.float32) for x in xs]
    for batch in batches:
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(batch[n])) for n in input_names])
        for i, value in enumerate(result[1]):
            maxima[i] = np.maximum(maxima[i], value.numpy())
    return dict(zip(xs, maxima))


def smoothing_scales(x_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s[K] for activations with per-channel maxima `x_max` read by matmuls with these [K, N] weights."""
    w_max = np.max([np.abs(w).max(1) for w in weights], axis=0)
    s = np.power(np.maximum(x_max, 1e-8), alpha) / np.power(np.maximum(w_max, 1e-8), 1.0 - alpha)
    s = np.where((x_max > 0) & (w_max > 0), s, 1.0)  # a dead channel or weight row stays as it is
    return np.clip(s, *S_RANGE).astype(np.float32)


def smooth(mod, batches: list[dict], input_names: list[str], engine, alpha: float):
    """`mod` with SmoothQuant applied to every float matmul with a constant weight."""
    maxima = channel_maxima(mod, batches, input_names, engine)
    if not maxima:
        return mod
    groups = _candidates(mod)
    defs = dict(main_bindings(mod))
    uses: dict = {}
    for _, value in main_bindings(mod):
        for v in vars_in(value):
            uses[v] = uses.get(v, 0) + 1
    for v in vars_in(mod["main"].body.body):
        uses[v] = uses.get(v, 0) + 1
    scales = {x: smoothing_scales(maxima[x], [const_value(defs[m].args[1]) for m in ms], alpha)
              for x, ms in groups.items()}
    # LayerNorms over the last axis whose output only the group's matmuls read: 1/s into gamma and beta
    folded = {x for x in scales if x in defs and op_name(defs[x]) == "nn.layer_norm"
              and all(is_const(a) for a in defs[x].args[1:3]) and uses.get(x, 0) == len(groups[x])
              and [int(a) for a in defs[x].attrs.axes] in ([-1], [len(x.ty.shape.values) - 1])}
    matmul_x = {m: x for x, ms in groups.items() for m in ms}
    divided: dict = {}

    def rule(bb, var, value):
        if var in folded:
            s = scales[var]
            data, gamma, beta = value.args
            return bb.emit(R.nn.layer_norm(data, const(const_value(gamma) / s, "float32"),
                                           const(const_value(beta) / s, "float32"), value.attrs.axes,
                                           value.attrs.epsilon, value.attrs.center, value.attrs.scale), var.name)
        if var in matmul_x:
            x_old = matmul_x[var]
            s = scales[x_old]
            x = value.args[0]
            if x_old not in folded:
                if x_old not in divided:
                    divided[x_old] = bb.emit(R.multiply(x, const(1.0 / s, "float32")))
                x = divided[x_old]
            w = const_value(value.args[1]) * s[:, None]
            return bb.emit(R.matmul(x, const(w.astype(np.float32), "float32"), out_dtype=value.attrs.out_dtype),
                           var.name)
        return emit_as_is(bb, var, value)

    return rewrite_main(mod, rule)
