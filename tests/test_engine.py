"""backends/engine.py: calibration's and the simulation's modules run first on quick (-O0) code,
then on optimized code once the quick runs have cost what compiling that costs; the values are the
model's either way."""

import numpy as np
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import engine, host_engine

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 3, 3, 3)).astype("float32")


def _conv():
    def body(bb, x):
        y = bb.emit(R.nn.conv2d(x, relax.const(W), padding=(1, 1)))
        return bb.emit(R.nn.relu(y))

    return module([tensor_var("x", (2, 3, 10, 7), "float32")], body)


def _reference(x):
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = sum(np.einsum("nchw,oc->nohw", padded[:, :, i:i + 10, j:j + 7], W[:, :, i, j].astype(np.float64))
              for i in range(3) for j in range(3))
    return np.maximum(out, 0)


def _runs(vm, n):
    xs = [RNG.standard_normal((2, 3, 10, 7)).astype("float32") for _ in range(n)]
    for x in xs:
        np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), _reference(x), rtol=1e-5, atol=1e-5)


def test_quick_code_is_replaced_by_optimized_code_once_its_runs_cost_the_difference(monkeypatch):
    monkeypatch.setattr(engine, "OPTIMIZED_COST", 1.0)  # no budget: the first run pays for the optimized compile
    vm = host_engine(_conv())
    quick = vm._vm
    _runs(vm, 3)
    assert vm._lowered is None and vm._vm is not quick


def test_few_runs_stay_on_the_quick_code(monkeypatch):
    monkeypatch.setattr(engine, "OPTIMIZED_COST", 1e9)
    vm = host_engine(_conv())
    quick = vm._vm
    _runs(vm, 3)
    assert vm._lowered is not None and vm._vm is quick


def test_engines_loaded_one_after_another_write_nothing_to_stderr(capfd):
    """TVM warns on stderr for each library after the first a process loads; a build loads three
    (calibration, simulation, the verified artifact) and its error, if any, must be its only line."""
    for _ in range(3):
        _runs(host_engine(_conv()), 1)
    assert capfd.readouterr().err == ""
