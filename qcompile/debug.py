"""`qcompile debug`: which layer's quantization costs the accuracy. Each quantized layer's output
against float, with only that layer quantized and in the fully quantized model, measured in
simulation (quantize/layer_errors.py) on the calibration data, ranked worst first, each with a
suggestion chosen from what was measured."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .atomic import check_writable
from .backends import host_engine
from .builder import import_float
from .debug_report import db_text, plot_layers, write_json
from .errors import QCompileError

if TYPE_CHECKING:
    from .quantize import QuantConfig

FINE_DB = 30.0  # a layer alone at least this close to float needs nothing (int8 layers measure 33-45 dB here)
BETTER_DB = 3.0  # a calibration method is suggested when its output is this much closer to float


@dataclass
class DebugResult:
    layers: list[dict]  # one row per quantized layer, worst first
    config: dict
    samples: int
    output_sqnr_db: float  # the model's first output, fully quantized, against float
    output_cosine: float

    def summary(self) -> str:
        worst = self.layers[0] if self.layers else None
        line = (f"{len(self.layers)} quantized layers on {self.samples} calibration samples; fully quantized output "
                f"{db_text(self.output_sqnr_db)} dB SQNR, cosine {self.output_cosine:.4f}")
        if worst is not None:
            line += f"; worst layer alone: {worst['name']} ({db_text(worst['sqnr_alone_db'])} dB)"
        return line

    def to_json(self) -> dict:
        """The result as JSON values: an infinite SQNR (an output equal to float) becomes null."""
        return _finite({"config": self.config, "samples": self.samples, "output_sqnr_db": self.output_sqnr_db,
                        "output_cosine": self.output_cosine, "summary": self.summary(),
                        "note": "SQNR in dB against float; null where the output equals float", "layers": self.layers})


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def debug(model, calib, *, quantize=None, input_shapes=None, input_values=None, json=None, plot=None,
          progress: bool = True) -> DebugResult:
    """Measure each quantized layer of `model` on the calibration data `calib` (as build takes
    them), quantized as `quantize` (a QuantConfig or its fields as a dict) says. `json` and `plot`:
    paths the result is written to (debug_report.py)."""
    from .quantize import STATIC_MODES, QuantConfig, calibrate_model, has_qdq
    from .quantize.layer_errors import Measurement

    for path in (json, plot):
        if path is not None:
            check_writable(path)
    config = quantize if isinstance(quantize, QuantConfig) else QuantConfig(**(quantize or {}))
    config = replace(config, progress=progress)
    config.check()
    if config.mode not in STATIC_MODES:
        raise QCompileError(f"qcompile debug measures calibrated (static) quantization; --mode {config.mode} has no "
                            "activation ranges to measure")
    if calib is None:
        raise QCompileError("qcompile debug needs calibration data (--calib), on which the layers are measured")
    imported, float_mod = import_float(model, input_shapes, input_values)
    if has_qdq(float_mod):
        raise QCompileError(f"{imported.source}: the model is already quantized (QDQ); debug its float original")
    c = calibrate_model(float_mod, imported.inputs, calib, config, imported.layer_names, engine=host_engine)
    measured = Measurement(c, [t.name for t in imported.inputs], host_engine, config.per_channel).run(progress)
    needs_method = {e.probe.name for e in measured.errors if _activation_bound(e)}
    measured.compare_methods(needs_method, config.percentile, config.symmetric, progress)
    rows = ranked([_row(i, e, config) for i, e in enumerate(measured.errors)])
    first = imported.inputs[0].name
    result = DebugResult(rows, config.describe(), sum(len(b[first]) for b in c.batches),
                         measured.output.sqnr_db, measured.output.cosine)
    if json is not None:
        write_json(result, json)
    if plot is not None:
        plot_layers(result, plot)
    return result


def _activation_bound(e) -> bool:
    """Below FINE_DB alone, and its activations lose more than its weights."""
    if e.alone.sqnr_db >= FINE_DB or e.probe.output_site is None:
        return False
    return e.weights is None or e.activations.sqnr_db <= e.weights.sqnr_db


def _row(order: int, e, config: QuantConfig) -> dict:
    pr = e.probe
    row = {"name": pr.name, "op": pr.op, "order": order, "sites": list(pr.sites),
           "sqnr_alone_db": e.alone.sqnr_db, "cosine_alone": e.alone.cosine,
           "sqnr_full_db": e.full.sqnr_db, "cosine_full": e.full.cosine, "sqnr_added_in_full_db": e.added.sqnr_db,
           "sqnr_weights_only_db": e.weights.sqnr_db if e.weights else None,
           "sqnr_activations_only_db": e.activations.sqnr_db if e.activations else None,
           "sqnr_by_calibration_method_db": {m: a.sqnr_db for m, a in e.methods.items()},
           "fixed_range": bool({pr.name, pr.output_site} & set(config.ranges))}
    row["suggestion"] = suggestion(row, config)
    return row


def ranked(rows: list[dict]) -> list[dict]:
    """Worst first by the layer alone (then by what it adds in the full model); each row also gets
    its rank by what it adds in the full model, where the figure against float carries upstream error."""
    by_full = sorted(rows, key=lambda r: (r["sqnr_added_in_full_db"], r["sqnr_alone_db"]))
    for i, row in enumerate(by_full):
        row["rank_in_full"] = i + 1
    order = sorted(rows, key=lambda r: (r["sqnr_alone_db"], r["sqnr_added_in_full_db"]))
    for i, row in enumerate(order):
        row["rank_alone"] = i + 1
    return order


def suggestion(row: dict, config: QuantConfig) -> str:
    """One line from the measurements: whether the weights or the activations lose more, and what
    helps that (a calibration method only when measured better)."""
    name, alone = row["name"], row["sqnr_alone_db"]
    if alone >= FINE_DB:
        return "fine as int8"
    weights, activations = row["sqnr_weights_only_db"], row["sqnr_activations_only_db"]
    if weights is not None and (activations is None or weights < activations):
        if not config.per_channel:
            return f"per-channel weights (--per-channel): its weights alone give {db_text(weights)} dB per tensor"
        return (f"keep it float (--skip {name}) or fp16 (--precision-config): its weights alone give {db_text(weights)} "
                "dB, per channel already")
    methods = row["sqnr_by_calibration_method_db"]
    now = activations if activations is not None else alone
    if row["fixed_range"] and methods.get(config.method, -math.inf) >= now + BETTER_DB:
        return (f"its fixed output range is too narrow: calibrated ({config.method}) it gives "
                f"{db_text(methods[config.method])} dB, {db_text(now)} dB now")
    if methods:
        method, best = max(methods.items(), key=lambda kv: kv[1])
        if best >= now + BETTER_DB:
            return f"--calib-method {method} (now {config.method}): its output gives {db_text(best)} dB that way, {db_text(now)} dB now"
    fp16 = " or fp16 (--precision-config)" if weights is not None else ""
    return f"keep it float (--skip {name}){fp16}: its activations give {db_text(now)} dB with every calibration method"
