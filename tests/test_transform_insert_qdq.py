"""insert_qdq: observe markers become quantize/dequantize pairs; weights are fake-quantized per channel."""

import tvm
from relax_builders import B1, QX, QY, W1, W2, conv, fake_quant_per_channel, function, qdq, two_convs
from tvm import relax
from tvm.relax import op as R

from qcompile.quantize import annotate, insert_qdq


def test_insert_qdq_quantizes_marked_tensors_and_weights():
    def expected(bb, x):
        xq = qdq(bb, x, QX)
        w1, _ = fake_quant_per_channel(W1)
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(xq, w1)), relax.const(B1)))))
        yq = qdq(bb, y, QY)
        w2, _ = fake_quant_per_channel(W2)
        return bb.emit(R.nn.softmax(bb.emit(conv(yq, w2)), axis=1))

    got = insert_qdq(annotate(function(two_convs)), {"x": QX, "conv2d_0.out": QY})
    tvm.ir.assert_structural_equal(got, function(expected), map_free_vars=True)


def test_bias_correction_follows_the_mean_batch_through_a_reshape_of_the_batch_axis():
    """The mean calibration batch keeps the tensor's whole shape: reshaped so that axis 0 is no
    longer the batch (a recurrent layer's [time, batch, ...] output), it still reaches the matmul."""
    import numpy as np

    from qcompile.ir import const_value, main_bindings, observe_site

    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 5)).astype("float32")
    mean = rng.standard_normal((1, 3, 8, 8))
    annotated = annotate(function(lambda bb, x: bb.emit(R.matmul(bb.emit(R.reshape(x, (2, 96))), relax.const(w)))))
    sites = [s for _, v in main_bindings(annotated) if (s := observe_site(v)) is not None]
    got = insert_qdq(annotated, {s: QX for s in sites}, input_means={"x": mean})
    shifts = [const_value(v.args[1]) for _, v in main_bindings(got)
              if isinstance(v, relax.Call) and v.op.name == "relax.subtract"]
    assert len(shifts) == 1
    scale = np.abs(w).max(axis=0) / 127.0
    delta = np.round(w / scale) * scale - w
    np.testing.assert_allclose(shifts[0], mean.reshape(2, 96).mean(axis=0) @ delta, rtol=1e-4, atol=1e-6)
