"""SmoothQuant (quantize/smooth.py): per-input-channel factors moved from activations into matmul
weights, folded into a LayerNorm where only the matmuls read it (Before/Expected), and an int8 model
of a layer with outlier channels made more accurate by it."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import host_engine
from qcompile.errors import QCompileError
from qcompile.frontends.common import TensorInfo
from qcompile.quantize import QuantConfig, quantize_module
from qcompile.quantize.smooth import channel_maxima, smooth, smoothing_scales

RNG = np.random.default_rng(0)
K, N = 16, 8
W1 = RNG.standard_normal((K, N)).astype(np.float32) * 0.2
W2 = RNG.standard_normal((K, N)).astype(np.float32) * 0.2
GAMMA = np.ones(K, np.float32)
GAMMA[[3, 11]] = 30.0  # outlier channels, as LayerNorms in trained transformers make them,
W1[[3, 11]] /= 30.0  # which the next layer's weights read with small rows
W2[[3, 11]] /= 30.0
BETA = RNG.standard_normal(K).astype(np.float32) * 0.1


def _module(layer_norm: bool, second_user: bool = False):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 6, K), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(R.nn.layer_norm(x, relax.const(GAMMA), relax.const(BETA), [-1]) if layer_norm
                        else R.multiply(x, relax.const(GAMMA)))
            a = bb.emit(R.matmul(h, relax.const(W1)))
            b = bb.emit(R.matmul(h, relax.const(W2)))
            y = bb.emit(R.add(a, b))
            if second_user:  # the LayerNorm's output also reaches something other than the matmuls
                y = bb.emit(R.add(y, R.strided_slice(h, [2], [0], [N])))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _batches(n=4):
    return [{"x": RNG.standard_normal((4, 6, K)).astype(np.float32)} for _ in range(n)]


def _channel_max(batches, layer_norm: bool):
    out = []
    for b in batches:
        x = b["x"]
        if layer_norm:
            x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * GAMMA + BETA
        else:
            x = x * GAMMA
        out.append(np.abs(x).max((0, 1)))
    return np.max(out, 0)


def test_scales_formula():
    s = smoothing_scales(np.array([4.0, 1.0, 0.0]), [np.array([[1.0], [4.0], [2.0]])], 0.5)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0], rtol=1e-6)  # sqrt(4/1), sqrt(1/4), a dead channel kept


def _expected(layer_norm: bool, s: np.ndarray):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 6, K), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            if layer_norm:
                h = bb.emit(R.nn.layer_norm(x, relax.const(GAMMA / s), relax.const(BETA / s), [-1]))
            else:
                h = bb.emit(R.multiply(x, relax.const(GAMMA)))
                h = bb.emit(R.multiply(h, relax.const((1.0 / s).astype(np.float32))))
            a = bb.emit(R.matmul(h, relax.const((W1 * s[:, None]).astype(np.float32))))
            b = bb.emit(R.matmul(h, relax.const((W2 * s[:, None]).astype(np.float32))))
            out = bb.emit_output(bb.emit(R.add(a, b)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("layer_norm", [True, False])
def test_rewrite_before_expected(layer_norm):
    batches = _batches()
    mod = _module(layer_norm)
    after = smooth(mod, batches, ["x"], host_engine, 0.5)
    (measured,) = channel_maxima(mod, batches, ["x"], host_engine).values()
    np.testing.assert_allclose(measured, _channel_max(batches, layer_norm), rtol=1e-4)
    s = smoothing_scales(measured, [W1, W2], 0.5)  # the compiled maxima, bit for bit
    expected = _expected(layer_norm, s)
    tvm.ir.assert_structural_equal(after, expected, map_free_vars=True)


def test_layer_norm_with_another_user_is_not_folded():
    after = smooth(_module(True, second_user=True), _batches(), ["x"], host_engine, 0.5)
    text = after.script()
    assert text.count("R.multiply") == 1  # x / s before the matmuls; the LayerNorm's other reader sees it unscaled


def _rmse_int8(mod, batches, alpha):
    config = QuantConfig(mode="simulate", method="minmax", smooth_quant=alpha, progress=False, bias_correction=False)
    quantized, report = quantize_module(mod, [TensorInfo("x", [4, 6, K], "float32")], batches, config,
                                        engine=host_engine)
    float_vm, int8_vm = host_engine(mod), host_engine(quantized)
    errs = []
    for b in _batches(8):
        x = tvm.runtime.tensor(b["x"])
        errs.append(np.square(float_vm["main"](x).numpy() - int8_vm["main"](x).numpy()).mean())
    return float(np.sqrt(np.mean(errs))), report


def test_smoothing_outlier_channels_improves_int8():
    mod, batches = _module(True), _batches()
    plain, _ = _rmse_int8(mod, batches, None)
    smoothed, report = _rmse_int8(mod, batches, 0.5)
    assert report["config"]["smooth_quant_alpha"] == 0.5
    assert smoothed < plain * 0.6, (plain, smoothed)


@pytest.mark.parametrize("config", [{"smooth_quant": 1.5}, {"smooth_quant": 0.5, "mode": "dynamic"}])
def test_bad_alpha_or_mode_is_one_line(config):
    with pytest.raises(QCompileError, match="--smooth-quant"):
        QuantConfig(**config).check()
