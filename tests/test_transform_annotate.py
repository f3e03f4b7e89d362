"""annotate: observe markers on the inputs of the ops that will compute in int8 (and plan's grouping)."""

import numpy as np
import tvm
from relax_builders import B1, W1, W2, conv, function, two_convs
from tvm import relax
from tvm.relax import op as R

from qcompile.ir import observe
from qcompile.quantize import annotate
from qcompile.quantize.annotate import Policy, plan


def test_annotate_marks_the_inputs_of_quantized_ops():
    def expected(bb, x):
        xo = bb.emit(observe(x, "x"))
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(xo, W1)), relax.const(B1)))))
        yo = bb.emit(observe(y, "conv2d_0.out"))
        return bb.emit(R.nn.softmax(bb.emit(conv(yo, W2)), axis=1))

    tvm.ir.assert_structural_equal(annotate(function(two_convs)), function(expected))


def test_annotate_leaves_skipped_layers_in_float():
    def expected(bb, x):
        xo = bb.emit(observe(x, "x"))
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(xo, W1)), relax.const(B1)))))
        return bb.emit(R.nn.softmax(bb.emit(conv(y, W2)), axis=1))

    got = annotate(function(two_convs), policy=Policy(skip_layers=frozenset({"conv2d_1"})))
    tvm.ir.assert_structural_equal(got, function(expected))


def test_plan_groups_epilogues_and_elementwise_chains():
    def hardswish_block(bb, x):
        c = bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))
        gate = bb.emit(R.divide(bb.emit(R.clip(bb.emit(R.add(c, relax.const(3.0))), 0, 6)), relax.const(6.0)))
        h = bb.emit(R.multiply(c, gate))
        return bb.emit(conv(h, W2))

    nodes = plan(function(hardswish_block)).nodes
    assert [(n.kind, n.op, len(n.members)) for n in nodes] == [
        ("compute", "conv2d", 2), ("compute", "conv2d", 1), ("elementwise", "elementwise", 4)]
    assert all(n.quantized for n in nodes)


def _heads(bb, x, then_conv: bool):
    """Two convolutions of x concatenated (a detector's score heads), the concat returned or read by a third."""
    a, b = bb.emit(conv(x, W1)), bb.emit(conv(x, W1))
    scores = bb.emit(R.concat([a, b], axis=1))
    return bb.emit(conv(scores, np.ones((4, 8, 1, 1), "float32"))) if then_conv else scores


def test_a_concat_only_the_outputs_read_stays_float_on_the_layers_unrounded_outputs():
    def expected(bb, x):
        xo = bb.emit(observe(x, "x"))
        a, b = bb.emit(conv(xo, W1)), bb.emit(conv(xo, W1))
        return bb.emit(R.concat([a, b], axis=1))

    got = annotate(function(lambda bb, x: _heads(bb, x, then_conv=False)))
    tvm.ir.assert_structural_equal(got, function(expected))
    assert [(n.op, n.quantized) for n in plan(function(lambda bb, x: _heads(bb, x, then_conv=False))).nodes] == [
        ("conv2d", True), ("conv2d", True), ("concat", False)]


def test_a_concat_an_int8_layer_reads_is_quantized_and_so_are_its_inputs():
    def expected(bb, x):
        xo = bb.emit(observe(x, "x"))
        ao = bb.emit(observe(bb.emit(conv(xo, W1)), "conv2d_0.out"))
        bo = bb.emit(observe(bb.emit(conv(xo, W1)), "conv2d_1.out"))
        scores = bb.emit(R.concat([ao, bo], axis=1))
        return bb.emit(conv(bb.emit(observe(scores, "concat_0.out")), np.ones((4, 8, 1, 1), "float32")))

    got = annotate(function(lambda bb, x: _heads(bb, x, then_conv=True)))
    tvm.ir.assert_structural_equal(got, function(expected))


def test_a_node_the_outputs_read_through_layout_ops_stays_float_and_one_a_float_op_reads_stays_int8():
    def heads(bb, x):
        a, b = bb.emit(conv(x, W1)), bb.emit(conv(x, W1))
        s = bb.emit(R.add(a, b))  # read by a float op inside the graph (the softmax): stays int8
        scores = bb.emit(R.concat([bb.emit(R.nn.softmax(s, axis=1)), a], axis=1))
        return bb.emit(R.reshape(scores, (1, 8, 64)))

    assert [(n.op, n.quantized) for n in plan(function(heads)).nodes] == [
        ("conv2d", True), ("conv2d", True), ("add", True), ("concat", False)]
