"""channels_last_pass (backends/cpu/channels_last.py): int8 conv2d layers go NHWC/OHWI, float-only modules stay NCHW."""

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from qcompile.backends.cpu.channels_last import channels_last_pass
from qcompile.backends.packed.pack import is_eligible

RNG = np.random.default_rng(0)
W1 = RNG.integers(-127, 128, (4, 3, 3, 3)).astype("int8")  # OIHW
B1 = RNG.integers(-1000, 1000, (1, 4, 1, 1)).astype("int32")  # NCHW broadcast bias
W2 = RNG.integers(-127, 128, (2, 4, 1, 1)).astype("int8")
WF = RNG.standard_normal((4, 3, 3, 3)).astype("float32")


def _nhwc(a: np.ndarray) -> np.ndarray:
    """OIHW -> OHWI (or an NCHW constant -> NHWC): what ConvertLayout + FoldConstant make of a constant."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _run(mod):
    return channels_last_pass(is_eligible)(mod)


def test_int8_conv_with_bias_and_clip_goes_nhwc():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 4, 8, 8), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1], out_dtype="int32")
                b = R.add(y, R.const(B1))
                c = R.clip(b, -128, 127)
                R.output(c)
            return c

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 4, 8, 8), "int32"):
            with R.dataflow():
                lv = R.permute_dims(x, axes=[0, 2, 3, 1])  # the model's input, once
                y = R.nn.conv2d(lv, R.const(_nhwc(W1)), padding=[1, 1, 1, 1], data_layout="NHWC",
                                kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")
                b = R.add(y, R.const(_nhwc(B1)))  # the bias constant folded to [1, 1, 1, 4]
                lv1 = R.maximum(b, R.const(-128, "int32"))  # clip as maximum/minimum (no layout rule for clip)
                c = R.minimum(lv1, R.const(127, "int32"))
                gv = R.permute_dims(c, axes=[0, 3, 1, 2])  # back to NCHW at the output
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(_run(Before), Expected)


def test_activations_stay_channels_last_between_int8_convs():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 8, 8), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1], out_dtype="int32")
                c = R.clip(R.add(y, R.const(B1)), -128, 127)
                q = R.astype(c, "int8")
                z = R.nn.conv2d(q, R.const(W2), out_dtype="int32")
                R.output(z)
            return z

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 8, 8), "int32"):
            with R.dataflow():
                lv = R.permute_dims(x, axes=[0, 2, 3, 1])
                y = R.nn.conv2d(lv, R.const(_nhwc(W1)), padding=[1, 1, 1, 1], data_layout="NHWC",
                                kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")
                b = R.add(y, R.const(_nhwc(B1)))
                lv1 = R.maximum(b, R.const(-128, "int32"))
                c = R.minimum(lv1, R.const(127, "int32"))
                q = R.astype(c, "int8")  # no transpose between the two layers
                z = R.nn.conv2d(q, R.const(_nhwc(W2)), data_layout="NHWC", kernel_layout="OHWI",
                                out_layout="NHWC", out_dtype="int32")
                gv = R.permute_dims(z, axes=[0, 3, 1, 2])
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(_run(Before), Expected)


def _float_conv():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(WF), padding=[1, 1, 1, 1])
                c = R.clip(y, 0, 6)  # stays a clip: the pass does nothing to a module without int8 convs
                R.output(c)
            return c

    return Before


def _int8_conv_runtime_weight():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8"),
                 w: R.Tensor((4, 3, 3, 3), "int8")) -> R.Tensor((1, 4, 8, 8), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, w, padding=[1, 1, 1, 1], out_dtype="int32")  # weight not a constant
                c = R.clip(y, -128, 127)
                R.output(c)
            return c

    return Before


@pytest.mark.parametrize("before", [_float_conv, _int8_conv_runtime_weight], ids=["float_conv", "int8_runtime_weight"])
def test_module_without_eligible_conv_is_unchanged(before):
    tvm.ir.assert_structural_equal(_run(before()), before())


TABLE = RNG.integers(-128, 128, 256).astype("int8")  # an int8 activation as a 256-entry table


def test_table_lookup_between_int8_convs_stays_channels_last():
    """ConvertLayout has no rule for take: it transposes around each lookup, the pass moves the
    transposes past it and they cancel."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 8, 8), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1], out_dtype="int32")
                c = R.clip(y, -128, 127)
                i = R.add(c, R.const(128, "int32"))
                t = R.take(R.const(TABLE), i, axis=0, mode="clip")
                z = R.nn.conv2d(t, R.const(W2), out_dtype="int32")
                R.output(z)
            return z

    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 8, 8), "int32"):
            with R.dataflow():
                lv = R.permute_dims(x, axes=[0, 2, 3, 1])
                y = R.nn.conv2d(lv, R.const(_nhwc(W1)), padding=[1, 1, 1, 1], data_layout="NHWC",
                                kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")
                lv1 = R.maximum(y, R.const(-128, "int32"))
                c = R.minimum(lv1, R.const(127, "int32"))
                i = R.add(c, R.const(128, "int32"))
                t = R.take(R.const(TABLE), i, axis=0, mode="clip")  # on the NHWC tensor, no transposes
                z = R.nn.conv2d(t, R.const(_nhwc(W2)), data_layout="NHWC", kernel_layout="OHWI",
                                out_layout="NHWC", out_dtype="int32")
                gv = R.permute_dims(z, axes=[0, 3, 1, 2])
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(_run(Before), Expected)


def _lookup_odd_shape():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 5, 7), "int8")) -> R.Tensor((1, 2, 5, 7), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1], out_dtype="int32")
                i = R.add(R.clip(R.right_shift(y, R.const(4, "int32")), -128, 127), R.const(128, "int32"))
                t = R.take(R.const(TABLE), i, axis=0, mode="clip")
                z = R.nn.conv2d(t, R.const(W2), out_dtype="int32")
                R.output(z)
            return z

    return Before


ALPHA = RNG.uniform(0.1, 0.3, (1, 4, 1, 1)).astype("float32")  # a PReLU's slope per channel


def _prelu_pool():
    """An int8 conv, a PReLU left in float (alpha * x with the constant first, and a where, which
    has no layout rule), a max pool, an int8 conv."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 4, 4), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1], out_dtype="int32")
                f = R.multiply(R.astype(y, "float32"), R.const(0.01, "float32"))
                neg = R.multiply(R.const(ALPHA), f)
                p = R.where(R.greater(f, R.const(0.0, "float32")), f, neg)
                q = R.quantize(p, R.const(0.05, "float32"), R.const(0, "int32"), out_dtype="int8", axis=-1)
                m = R.nn.max_pool2d(q, pool_size=[2, 2], strides=[2, 2], ceil_mode=True)
                z = R.nn.conv2d(m, R.const(W2), out_dtype="int32")
                R.output(z)
            return z

    return Before


def test_prelu_float_island_and_pool_between_int8_convs_stay_channels_last():
    """A PReLU left in float (alpha * x with the constant first, and a where, which has no layout
    rule) and a max pool after it: no transposes between the two convolutions."""
    @I.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 4, 4), "int32"):
            with R.dataflow():
                lv = R.permute_dims(x, axes=[0, 2, 3, 1])
                y = R.nn.conv2d(lv, R.const(_nhwc(W1)), padding=[1, 1, 1, 1], data_layout="NHWC",
                                kernel_layout="OHWI", out_layout="NHWC", out_dtype="int32")
                lv1 = R.astype(y, "float32")
                f = R.multiply(lv1, R.const(0.01, "float32"))
                neg = R.multiply(f, R.const(_nhwc(ALPHA)))  # the tensor first, the slope in NHWC
                lv2 = R.greater(f, R.const(0.0, "float32"))
                p = R.where(lv2, f, neg)
                q = R.quantize(p, R.const(0.05, "float32"), R.const(0, "int32"), out_dtype="int8", axis=-1)
                m = R.nn.max_pool2d(q, pool_size=[2, 2], strides=[2, 2], ceil_mode=True, layout="NHWC",
                                    out_layout="NHWC")
                z = R.nn.conv2d(m, R.const(_nhwc(W2)), data_layout="NHWC", kernel_layout="OHWI",
                                out_layout="NHWC", out_dtype="int32")
                gv = R.permute_dims(z, axes=[0, 3, 1, 2])
                R.output(gv)
            return gv

    tvm.ir.assert_structural_equal(_run(_prelu_pool()), Expected)


@pytest.mark.parametrize("before, shape", [("_lookup_odd_shape", (1, 3, 5, 7)), ("_prelu_pool", (1, 3, 8, 8)),
                                           ("_upsample_concat_neck", (1, 3, 8, 8))])
def test_moved_transposes_keep_the_values(before, shape):
    """The rewritten module computes what the original did."""
    from tvm import relax

    mod = globals()[before]()
    x = RNG.integers(-128, 128, shape).astype("int8")
    outs = []
    for m in (mod, _run(mod)):
        vm = relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())
        outs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


W3 = RNG.integers(-127, 128, (2, 8, 1, 1)).astype("int8")
WS = RNG.integers(-127, 128, (4, 3, 3, 3)).astype("int8")


def _upsample_concat_neck():
    """A detector's neck: two int8 branches that each leave a float PReLU island (a where, no layout
    rule), the coarser one upsampled by a nearest-neighbour resize, concatenated, an int8 conv."""
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "int8")) -> R.Tensor((1, 2, 8, 8), "int32"):
            with R.dataflow():
                y = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1], out_dtype="int32")
                f = R.multiply(R.astype(y, "float32"), R.const(0.01, "float32"))
                p = R.where(R.greater(f, R.const(0.0, "float32")), f, R.multiply(f, R.const(0.25, "float32")))
                a = R.quantize(p, R.const(0.05, "float32"), R.const(0, "int32"), out_dtype="int8", axis=-1)
                s = R.nn.conv2d(x, R.const(WS), strides=[2, 2], padding=[1, 1, 1, 1], out_dtype="int32")
                g = R.multiply(R.astype(s, "float32"), R.const(0.01, "float32"))
                q = R.where(R.greater(g, R.const(0.0, "float32")), g, R.multiply(g, R.const(0.25, "float32")))
                b = R.quantize(q, R.const(0.05, "float32"), R.const(0, "int32"), out_dtype="int8", axis=-1)
                u = R.image.resize2d(b, R.shape([8, 8]), layout="NCHW", method="nearest_neighbor",
                                     coordinate_transformation_mode="asymmetric", rounding_method="floor")
                c = R.concat((a, u), axis=1)
                z = R.nn.conv2d(c, R.const(W3), out_dtype="int32")
                R.output(z)
            return z

    return Before


def test_upsample_and_concat_neck_stays_channels_last():
    """The resize and the concat run on NHWC tensors: the only transposes left are the model
    input's and output's (the resize had one on each side, the concat one per input)."""
    from qcompile.ir import main_bindings, op_name

    after = _run(_upsample_concat_neck())
    calls = [v for _, v in main_bindings(after)]
    assert [op_name(v) for v in calls].count("permute_dims") == 3  # x into each branch's conv, and z out
    assert all(v.args[0].same_as(after["main"].params[0]) for v in calls[:-1] if op_name(v) == "permute_dims")
    (resize,) = [v for v in calls if op_name(v) == "image.resize2d"]
    (concat,) = [v for v in calls if op_name(v) == "concat"]
    assert str(resize.attrs.layout) == "NHWC" and int(concat.attrs.axis) == 3


def _conv_then_long_tail(steps: int):
    """An int8 conv2d, its epilogue, then a recurrent-style tail of `steps` float steps (ddddocr's
    LSTM after its CNN): nothing after the flatten has a layout."""
    from tvm import relax
    from tvm.relax import op as ops

    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(ops.nn.conv2d(x, relax.const(W1), padding=[1, 1, 1, 1], out_dtype="int32"))
            y = bb.emit(ops.clip(bb.emit(ops.add(y, relax.const(B1))), -128, 127))
            h = bb.emit(ops.astype(bb.emit(ops.reshape(y, (1, 256))), "float32"))
            for i in range(steps):
                h = bb.emit(ops.sigmoid(bb.emit(ops.add(h, relax.const(np.float32(i))))))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def test_a_long_tail_after_the_last_convolution_is_left_out_of_convert_layout(monkeypatch):
    """ConvertLayout's time grows faster than the square of a function's length (20 s for 8000
    bindings): where a long tail follows the last convolution, it sees the function up to the
    convolution's epilogue only, and the result is the module it would have made of the whole."""
    from tvm import relax

    from qcompile.backends.cpu import channels_last

    mod = _conv_then_long_tail(40)
    whole = channels_last_pass(is_eligible)(mod)
    seen = []
    convert = relax.transform.ConvertLayout
    monkeypatch.setattr(relax.transform, "ConvertLayout",
                        lambda desired: lambda m: seen.append(len(m["main"].body.blocks[0].bindings)) or convert(desired)(m))
    monkeypatch.setattr(channels_last, "LONG_TAIL", 20)
    cut = channels_last_pass(is_eligible)(mod)
    assert seen and seen[0] < 10  # the convolution, its epilogue and the head's output tuple
    tvm.ir.assert_structural_equal(cut, whole)
