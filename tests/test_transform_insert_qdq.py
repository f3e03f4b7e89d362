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
