"""calibrate: run the annotated float model on calibration batches and estimate a range for
every observed tensor. The observe markers become extra outputs of the module ("taps"), which the
engine handed in runs."""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..errors import QCompileError
from ..ir import emit_as_is, observe_site, rewrite_main
from .params import QParams, activation_qparams
from .ranges import HistogramObserver, estimate_range


def tap_outputs(mod):
    """`mod` without observe markers, returning (original result, (observed tensors...)),
    and the site names in that order."""
    sites: list[str] = []
    tapped: list = []

    def rule(bb, var, value):
        site = observe_site(value)
        if site is not None:
            sites.append(site)
            tapped.append(value.args[1])
            return value.args[1]
        return emit_as_is(bb, var, value)

    def finish(bb, result):
        return relax.Tuple([result, relax.Tuple(tapped)])

    return rewrite_main(mod, rule, finish), sites


def collect(mod, batches: list[dict], input_names: list[str], engine, progress: bool = True) -> dict[str, HistogramObserver]:
    """Observers filled with every observed tensor over all calibration batches; `engine` turns
    the tapped module into something to run (backends.host_engine: a Relax VM on this machine)."""
    import tvm
    from tqdm import tqdm

    tap_mod, sites = tap_outputs(mod)
    if not sites:
        return {}
    vm = engine(tap_mod)
    observers = {site: HistogramObserver() for site in sites}
    for batch in tqdm(batches, desc="calibrating", unit="batch", disable=not progress):
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(batch[n])) for n in input_names])
        for site, value in zip(sites, result[1]):
            observers[site].update(value.numpy())
    return observers


def choose_qparams(observers: dict[str, HistogramObserver], method: str = "minmax", percentile: float = 99.99,
                   symmetric: bool = True) -> dict[str, QParams]:
    """Per-tensor activation parameters for every observed site."""
    qparams = {}
    for site, obs in observers.items():
        if obs.empty:
            raise QCompileError(f"calibration: no data reached tensor '{site}'")
        if not (np.isfinite(obs.min) and np.isfinite(obs.max)):
            raise QCompileError(f"calibration: tensor '{site}' took non-finite values")
        lo, hi = estimate_range(obs, method, percentile)
        qparams[site] = activation_qparams(lo, hi, symmetric)
    return qparams
