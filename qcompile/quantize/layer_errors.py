"""layer_errors: how far each quantized layer's output moves from float, measured in simulation.

One module is compiled from the calibrated model: insert_qdq's rule with switches (each
activation's quantize/dequantize pair, each compute layer's quantized weight and bias correction
is blended with the float value by a scalar input) and every quantized layer's output returned as
a tap. One layer quantized alone, its weights or its activations alone, or the whole model is then
a run with other switches, not a build.

A layer owns its weights and the quantization of its output (the range its int8 kernel
requantizes to); a model input, or a tensor no quantized layer produces, belongs to the layers
that read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tvm import relax
from tvm.relax import op as R

from ..ir import is_const, main_bindings, observe_site, rewrite_main
from .insert_qdq import qdq_rule
from .params import activation_qparams
from .ranges import METHODS, estimate_range


def _blend(switch, float_value, quantized):
    return R.add(float_value, R.multiply(switch, R.subtract(quantized, float_value)))


class Switches:
    """A scalar input per activation site and per compute binding: 0 keeps it float, 1 quantizes it."""

    def __init__(self, sites, weights):
        scalar = relax.TensorType([], "float32")
        self.sites = {s: relax.Var(f"site_{i}", scalar) for i, s in enumerate(sites)}
        self.weights = {w: relax.Var(f"weight_{i}", scalar) for i, w in enumerate(weights)}

    @property
    def params(self) -> list:
        return [*self.sites.values(), *self.weights.values()]

    def activation(self, site, x, quantized):
        return _blend(self.sites[site], x, quantized)

    def weight(self, binding, w, quantized):
        return _blend(self.weights[binding], w, quantized)

    def correction(self, binding, shift):
        return R.multiply(self.weights[binding], shift)

    def values(self, sites=(), weights=()) -> list[float]:
        return [float(s in sites) for s in self.sites] + [float(w in weights) for w in self.weights]


@dataclass(frozen=True)
class Probe:
    """What quantizing one layer switches on, and where its output is read."""
    name: str
    op: str
    sites: tuple[str, ...]  # the activation sites it owns
    weight: str | None  # its compute binding, where it has a constant weight
    output_site: str | None
    tap: str  # its output site, else the name of its output binding


def probes(mod, p) -> list[Probe]:
    """One probe per quantized node of the plan `p` of `mod`, in program order."""
    defs = dict(main_bindings(mod))
    producer = {out: n for n in p.nodes for out in n.outputs}
    found = []
    for node in p.nodes:
        if not node.quantized:
            continue
        output_site = next((p.sites[o] for o in node.outputs if o in p.sites), None)
        sites = [output_site] if output_site else []
        for var in node.inputs:
            src = p.source_of(var)
            owner = producer.get(src)
            if src in p.sites and (owner is None or not owner.quantized) and p.sites[src] not in sites:
                sites.append(p.sites[src])
        first = defs[node.members[0]]
        weight = str(node.members[0].name) if node.kind == "compute" and is_const(first.args[1]) else None
        found.append(Probe(node.name, node.op, tuple(sites), weight, output_site,
                           output_site or str(node.outputs[0].name)))
    return found


def switched_module(c, layers: list[Probe], per_channel: bool = True):
    """(module, switches): `c.annotated` (quantize.Calibrated) with its quantization switchable,
    returning (the model's result, (each probe's output...))."""
    switches = Switches(sorted(c.qparams), [pr.weight for pr in layers if pr.weight])
    rule = qdq_rule(c.qparams, per_channel, c.means, c.weight_bits, switches)
    wanted = {pr.tap for pr in layers}
    taps: dict = {}

    def tapping(bb, var, value):
        out = rule(bb, var, value)
        key = observe_site(value) or str(var.name)
        if key in wanted:
            taps[key] = out
        return out

    def finish(bb, result):
        return relax.Tuple([result, relax.Tuple([taps[pr.tap] for pr in layers])])

    return rewrite_main(c.annotated, tapping, finish, extra_params=switches.params), switches


class Agreement:
    """SQNR and cosine similarity of a quantized tensor against its float reference, over batches."""

    def __init__(self):
        self.signal = self.noise = self.dot = self.power = 0.0

    def update(self, got: np.ndarray, ref: np.ndarray) -> None:
        g, r = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
        self.signal += float(r @ r)
        self.power += float(g @ g)
        self.dot += float(g @ r)
        self.noise += float((g - r) @ (g - r))

    @property
    def sqnr_db(self) -> float:
        return float("inf") if self.noise == 0 else 10.0 * float(np.log10(max(self.signal, 1e-30) / self.noise))

    @property
    def cosine(self) -> float:
        norms = np.sqrt(self.signal * self.power)
        return 1.0 if norms == 0 and self.noise == 0 else float(self.dot / norms) if norms else 0.0


@dataclass
class LayerError:
    probe: Probe
    alone: Agreement = field(default_factory=Agreement)  # only this layer quantized, against float
    full: Agreement = field(default_factory=Agreement)  # in the fully quantized model, against float
    # in the fully quantized model, against the same model with only this layer float: the error
    # this layer adds there (the full-model figure also carries everything upstream)
    added: Agreement = field(default_factory=Agreement)
    weights: Agreement | None = None  # only its weights quantized (compute layers)
    activations: Agreement | None = None  # only its activation sites quantized (layers with weights and sites)
    methods: dict = field(default_factory=dict)  # calibration method -> its output site quantized that way


class Measurement:
    """The switchable module of a quantize.Calibrated, compiled once by `engine`, and what it measured."""

    def __init__(self, c, input_names: list[str], engine, per_channel: bool = True):
        import tvm

        self.calibrated, self.input_names = c, input_names
        self.layers = probes(c.float_mod, c.plan)
        mod, self.switches = switched_module(c, self.layers, per_channel)
        self.vm = engine(mod)
        self.errors = [LayerError(pr) for pr in self.layers]
        self.output = Agreement()  # the model's first output, fully quantized against float
        self._scalars = {v: tvm.runtime.tensor(np.float32(v)) for v in (0.0, 1.0)}

    def _run(self, inputs, sites=(), weights=()):
        result = self.vm["main"](*inputs, *[self._scalars[v] for v in self.switches.values(sites, weights)])
        out = result[0]
        return (out if hasattr(out, "numpy") else out[0]), result[1]

    def _batches(self, desc: str, progress: bool):
        import tvm
        from tqdm import tqdm

        for batch in tqdm(self.calibrated.batches, desc=desc, unit="batch", disable=not progress):
            yield [tvm.runtime.tensor(np.ascontiguousarray(batch[n])) for n in self.input_names]

    def run(self, progress: bool = True) -> "Measurement":
        """Every layer alone, its weights and its activations alone, in the full model, and the full
        model without it, on every calibration batch."""
        all_sites, all_weights = set(self.switches.sites), set(self.switches.weights)
        runs = []
        for i, (e, pr) in enumerate(zip(self.errors, self.layers)):
            runs.append((i, "alone", pr.sites, {pr.weight} - {None}))
            if pr.weight and pr.sites:  # which of the two loses more decides the advice
                e.weights, e.activations = Agreement(), Agreement()
                runs += [(i, "weights", (), {pr.weight}), (i, "activations", pr.sites, ())]
        for inputs in self._batches("layer errors", progress):
            ref_out, ref = self._run(inputs)
            ref = [t.numpy() for t in ref]
            out, full = self._run(inputs, all_sites, all_weights)
            full = [t.numpy() for t in full]
            self.output.update(out.numpy(), ref_out.numpy())
            for i, e in enumerate(self.errors):
                e.full.update(full[i], ref[i])
                pr = self.layers[i]
                without = self._run(inputs, all_sites - set(pr.sites), all_weights - {pr.weight})[1][i].numpy()
                e.added.update(full[i], without)
            for i, how, sites, weights in runs:
                getattr(self.errors[i], how).update(self._run(inputs, sites, weights)[1][i].numpy(), ref[i])
        return self

    def compare_methods(self, names, percentile: float = 99.99, symmetric: bool = True, progress: bool = True) -> None:
        """For the layers `names` that own an output site: that site quantized with the range of each
        calibration method, against float (what a method would change, without a new build)."""
        obs = self.calibrated.observers
        chosen = {i: {m: activation_qparams(*estimate_range(obs[pr.output_site], m, percentile), symmetric)
                      for m in METHODS}
                  for i, pr in enumerate(self.layers) if pr.name in names and pr.output_site}
        if not chosen:
            return
        for inputs in self._batches("calibration methods", progress):
            ref = self._run(inputs)[1]
            for i, qparams in chosen.items():
                x = ref[i].numpy()
                for method, qp in qparams.items():
                    self.errors[i].methods.setdefault(method, Agreement()).update(qp.dequantize(qp.quantize(x)), x)
