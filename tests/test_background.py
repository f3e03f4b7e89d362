"""background.py and host_engine_beside: the simulation's code is generated on a second thread while
the build compiles the artifact on the first; both must come out as they would one after the other."""

import threading

import numpy as np
import pytest
import tvm
from relax_builders import module, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import backend_for, host_engine_beside
from qcompile.background import Background
from qcompile.targets import get_target

RNG = np.random.default_rng(0)


def test_the_result_comes_from_another_thread_and_its_error_is_raised_to_the_caller():
    assert Background(threading.get_ident).result() != threading.get_ident()

    def fails():
        raise ValueError("from the thread")

    pending = Background(fails)
    with pytest.raises(ValueError, match="from the thread"):
        pending.result()


def _conv_module(dtype: str, channels: int):
    w = RNG.integers(-127, 128, (channels, 3, 3, 3)).astype(dtype)

    def body(bb, x):
        out = "int32" if dtype == "int8" else "float32"
        y = bb.emit(R.nn.conv2d(x, relax.const(w), padding=(1, 1), out_dtype=out))
        return bb.emit(R.nn.relu(y) if dtype == "float32" else R.add(y, relax.const(np.int32(7))))

    return module([tensor_var("x", (1, 3, 9, 11), dtype)], body), w


def test_a_module_compiled_beside_another_computes_what_it_computes_alone():
    """An int8 convolution's code generated on the second thread while a float one compiles on the
    first (Python passes and LLVM at once): both exact against numpy, run after each other."""
    int8_mod, wq = _conv_module("int8", 5)
    float_mod, wf = _conv_module("float32", 6)
    pending = host_engine_beside(int8_mod)
    backend = backend_for(get_target("host"))
    float_vm = relax.VirtualMachine(backend.compile(float_mod), tvm.cpu())
    int8_vm = pending.result()

    xq = RNG.integers(-128, 128, (1, 3, 9, 11)).astype("int8")
    xf = RNG.standard_normal((1, 3, 9, 11)).astype("float32")
    got_q = int8_vm["main"](tvm.runtime.tensor(xq)).numpy()
    got_f = float_vm["main"](tvm.runtime.tensor(xf)).numpy()
    np.testing.assert_array_equal(got_q, _conv_reference(xq.astype(np.int64), wq.astype(np.int64)) + 7)
    np.testing.assert_allclose(got_f, np.maximum(_conv_reference(xf.astype(np.float64), wf.astype(np.float64)), 0),
                               rtol=1e-5, atol=1e-5)


def _conv_reference(x, w):
    """3x3, padding 1, stride 1, NCHW/OIHW."""
    n, c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out
