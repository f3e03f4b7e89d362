"""realize: a QDQ module becomes int8 kernels with a fixed-point requantize, within one step of the simulation."""

import numpy as np
import pytest
import tvm
from relax_builders import B1, QX, QY, RNG, W1, W2, conv, fake_quant_per_channel, function, module, qdq, tensor_var
from tvm import relax
from tvm.relax import op as R

from qcompile.backends import host_engine
from qcompile.ir import const_value
from qcompile.quantize import annotate, insert_qdq, realize


def test_realize_turns_qdq_conv_into_int8_kernel_with_fixed_point_requantize():
    w1, sw = fake_quant_per_channel(W1)

    def before(bb, x):
        xq = qdq(bb, x, QX)
        y = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(xq, w1)), relax.const(B1)))))
        return qdq(bb, y, QY)

    def expected(bb, x):
        sx, zx = relax.const(np.float32(QX.scale)), relax.const(np.int32(0))
        q = bb.emit(R.quantize(x, sx, zx, axis=-1, out_dtype="int8"))
        wq = np.round(w1 / sw[:, None, None, None]).astype("int8")
        acc = bb.emit(R.nn.conv2d(q, relax.const(wq), padding=[1, 1, 1, 1], out_dtype="int32"))
        s_acc = np.float64(QX.scale) * sw.astype(np.float64)
        bias = bb.emit(R.add(acc, relax.const(np.round(B1 / s_acc.reshape(1, -1, 1, 1)).astype("int32"))))
        relu = bb.emit(R.maximum(bias, relax.const(np.int32(0))))
        m = (s_acc / np.float64(QY.scale)).reshape(1, -1, 1, 1)
        n = (30 - np.floor(np.log2(m))).astype("int64")
        mult = np.round(m * 2.0**n).astype("int64")
        y = R.multiply(R.astype(relu, "int64"), relax.const(mult, "int64"))  # int64 needs its dtype spelled out
        y = R.right_shift(R.add(y, relax.const(1 << (n - 1), "int64")), relax.const(n, "int64"))
        out_q = bb.emit(R.astype(R.clip(y, -128, 127), "int8"))
        sy, zy = relax.const(np.float32(QY.scale)), relax.const(np.int32(0))
        return bb.emit(R.dequantize(out_q, sy, zy, axis=-1, out_dtype="float32"))

    tvm.ir.assert_structural_equal(realize(function(before)), function(expected), map_free_vars=True)


def _run(mod, x):
    return host_engine(mod)["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("symmetric", [True, False])
def test_realized_layer_is_within_one_step_of_simulation(symmetric):
    """conv + bias + relu, a hardswish table, a residual add and global pooling: the integer
    module's 8-bit codes are at most one quantization step from the float simulation's."""
    from qcompile.quantize.calibrate import choose_qparams, collect

    def model(bb, x):
        c = bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))
        h = bb.emit(R.multiply(c, bb.emit(R.divide(bb.emit(R.clip(bb.emit(R.add(c, relax.const(3.0))), 0, 6)),
                                                   relax.const(6.0)))))
        r = bb.emit(R.add(bb.emit(conv(h, W2)), h))
        return bb.emit(R.multiply(bb.emit(R.mean(r, axis=[2, 3], keepdims=True)), relax.const(1.0)))

    mod = function(model)
    xs = [RNG.standard_normal((1, 3, 8, 8)).astype("float32") for _ in range(4)]
    annotated = annotate(mod)
    qparams = choose_qparams(collect(annotated, [{"x": x} for x in xs], ["x"], host_engine, progress=False), symmetric=symmetric)
    simulated = insert_qdq(annotated, qparams)
    realized = realize(simulated)
    out_step = float(qparams["mean_0.out"].scale) if "mean_0.out" in qparams else None
    for x in xs:
        sim, got = _run(simulated, x), _run(realized, x)
        step = out_step or float(max(q.scale for q in qparams.values()))
        assert np.abs(sim - got).max() <= step * 1.01, (np.abs(sim - got).max(), step)


@pytest.mark.parametrize("symmetric", [True, False])
def test_channels_last_convolutions_quantize_per_output_channel_and_realize_to_int8(symmetric):
    """TFLite imports NHWC data with HWIO kernels (HWOI for depthwise). Their weights are scaled
    along O, wherever the layout puts it, and the layers become integer convolutions (they were
    left in float while the report said int8, and scaled along H)."""
    from qcompile.ir import main_bindings, op_name
    from qcompile.quantize.calibrate import choose_qparams, collect

    w = RNG.standard_normal((3, 3, 3, 4)).astype("float32") * np.array([0.01, 1, 10, 100], "float32")  # HWIO
    dw = RNG.standard_normal((3, 3, 4, 1)).astype("float32") * np.array([1, 5, 0.2, 50], "float32")[:, None]  # HWOI

    def model(bb, x):
        c = bb.emit(R.nn.relu(bb.emit(R.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1], data_layout="NHWC",
                                                  kernel_layout="HWIO"))))
        return bb.emit(R.nn.conv2d(c, relax.const(dw), padding=[1, 1, 1, 1], groups=4, data_layout="NHWC",
                                   kernel_layout="HWOI"))

    mod = module([tensor_var("x", (1, 8, 8, 3), "float32")], model)
    xs = [RNG.standard_normal((1, 8, 8, 3)).astype("float32") for _ in range(4)]
    annotated = annotate(mod)
    qparams = choose_qparams(collect(annotated, [{"x": x} for x in xs], ["x"], host_engine, progress=False),
                             symmetric=symmetric)
    simulated = insert_qdq(annotated, qparams)
    fake = [const_value(v.args[1]) for _, v in main_bindings(simulated) if op_name(v) == "nn.conv2d"]
    per_o = np.abs(w).max(axis=(0, 1, 2)) / 127
    np.testing.assert_allclose(fake[0], np.round(w / per_o) * per_o, rtol=1e-5, atol=1e-7)
    realized = realize(simulated)
    convs = [v for _, v in main_bindings(realized) if op_name(v) == "nn.conv2d"]
    assert len(convs) == 2 and all(str(c.attrs.out_dtype) == "int32" for c in convs)
    for x in xs:
        sim, got = _run(simulated, x), _run(realized, x)
        assert np.abs(sim - got).max() <= float(max(q.scale for q in qparams.values())) * 1.01


@pytest.mark.parametrize("symmetric", [True, False])
def test_zero_padding_stays_8_bit_with_the_zero_points_code(symmetric):
    """A residual block that widens its channels with a constant pad of zeros (BlazeFace,
    MobileNet exports): the pad moves 8-bit codes, padded with the zero point's code, with no
    dequantize/quantize island around it; a pad with another value stays float."""
    from qcompile.ir import main_bindings, op_name
    from qcompile.quantize.calibrate import choose_qparams, collect

    def model(pad_value):
        def body(bb, x):
            c = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))))  # 4 channels
            p = bb.emit(R.nn.pad(c, [0, 0, 0, 2, 0, 0, 0, 0], pad_value=pad_value))  # 6 channels
            w = RNG.standard_normal((6, 6, 1, 1)).astype("float32")
            return bb.emit(R.add(bb.emit(conv(p, w)), p))
        return function(body)

    xs = [RNG.standard_normal((1, 3, 8, 8)).astype("float32") for _ in range(4)]
    for pad_value, integer in ((0.0, True), (0.5, False)):
        annotated = annotate(model(pad_value))
        qparams = choose_qparams(collect(annotated, [{"x": x} for x in xs], ["x"], host_engine, progress=False),
                                 symmetric=symmetric)
        simulated = insert_qdq(annotated, qparams)
        realized = realize(simulated)
        pads = [v for _, v in main_bindings(realized) if op_name(v) == "nn.pad" and int(v.attrs.pad_width[3]) == 2]
        ops = [op_name(v) for _, v in main_bindings(realized)]
        assert len(pads) == 1 and (str(pads[0].args[0].ty.dtype) in ("int8", "uint8")) == integer
        assert (ops.count("quantize") == 1) == integer, ops
        if integer:
            assert float(pads[0].attrs.pad_value) in {float(q.zero_point) for q in qparams.values()}
        for x in xs:
            sim, got = _run(simulated, x), _run(realized, x)
            assert np.abs(sim - got).max() <= float(max(q.scale for q in qparams.values())) * 1.01


def _calibrated(mod, symmetric=True):
    """(the simulated module, the realized module, the largest quantization step) of `mod`."""
    from qcompile.quantize.calibrate import choose_qparams, collect

    xs = [RNG.standard_normal((1, 3, 8, 8)).astype("float32") for _ in range(4)]
    annotated = annotate(mod)
    qparams = choose_qparams(collect(annotated, [{"x": x} for x in xs], ["x"], host_engine, progress=False),
                             symmetric=symmetric)
    simulated = insert_qdq(annotated, qparams)
    return simulated, realize(simulated), float(max(q.scale for q in qparams.values())), xs


def _ops(mod) -> list:
    from qcompile.ir import main_bindings, op_name

    return [op_name(v) for _, v in main_bindings(mod)]


W_CAT = np.concatenate([W2, W2], axis=1)


def _one_step_into(w, step: float) -> float:
    """The most a float conv's output can move when each input code moves by one step."""
    return float(np.abs(w).sum(axis=(1, 2, 3)).max()) * step * 1.01


def _hardswish(bb, c):
    return bb.emit(R.multiply(c, bb.emit(R.divide(bb.emit(R.clip(bb.emit(R.add(c, relax.const(3.0))), 0, 6)),
                                                  relax.const(6.0)))))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("activation, lookups", [("hardswish", 0), ("sigmoid", 1), ("hardsigmoid", 0)])
def test_arithmetic_activations_are_computed_and_others_looked_up(activation, lookups, symmetric):
    """A hardswish or hardsigmoid between int8 convs is float32 arithmetic on the dequantized codes
    (elementwise: it fuses into the conv's epilogue), not a 256-entry lookup; a sigmoid (exp) is
    still a lookup. Either way, within one step of the simulation."""
    def act(bb, c):
        if activation == "hardswish":
            return _hardswish(bb, c)
        if activation == "sigmoid":
            return bb.emit(R.sigmoid(c))
        return bb.emit(R.clip(bb.emit(R.add(bb.emit(R.multiply(c, relax.const(1 / 6))), relax.const(0.5))), 0, 1))

    def model(then_conv):
        def body(bb, x):
            a = act(bb, bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1))))
            return bb.emit(conv(a, W2)) if then_conv else a
        return function(body)

    _, realized, _, _ = _calibrated(model(then_conv=True), symmetric)
    ops = _ops(realized)
    assert ops.count("take") == lookups and ops.count("nn.conv2d") == 2, ops
    simulated, realized, step, xs = _calibrated(model(then_conv=False), symmetric)  # the activation's own values
    for x in xs:
        assert np.abs(_run(simulated, x) - _run(realized, x)).max() <= step * 1.01


@pytest.mark.parametrize("method, integer", [("nearest_neighbor", True), ("linear", False)])
def test_nearest_resize_moves_8_bit_codes(method, integer):
    """A nearest-neighbour upsample (FPN/PAN necks) copies values: it runs on the 8-bit codes with
    no dequantize/quantize island; a bilinear one computes new values and stays float."""
    def model(bb, x):
        c = bb.emit(R.nn.relu(bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))))
        u = bb.emit(R.image.resize2d(c, (16, 16), method=method, coordinate_transformation_mode="asymmetric",
                                     rounding_method="floor"))
        return bb.emit(conv(u, W2))  # a quantized consumer

    simulated, realized, step, xs = _calibrated(function(model))
    from qcompile.ir import main_bindings, op_name

    (resize,) = [v for _, v in main_bindings(realized) if op_name(v) == "image.resize2d"]
    assert (str(resize.args[0].ty.dtype) == "int8") == integer
    assert (_ops(realized).count("quantize") == 1) == integer  # the model input's alone
    for x in xs:
        assert np.abs(_run(simulated, x) - _run(realized, x)).max() <= _one_step_into(W2, step)


def test_concat_of_different_scales_requantizes_each_input_to_its_output_scale():
    """Two branches of very different ranges concatenated: each branch is requantized once to the
    concat's output codes and the concat moves 8-bit values (not int32 at
    a common scale, then requantized again), within one step of the simulation."""
    from qcompile.ir import main_bindings, op_name

    def model(bb, x):
        a = bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))
        b = bb.emit(R.multiply(bb.emit(conv(x, W1)), relax.const(40.0)))
        return bb.emit(conv(bb.emit(R.concat([a, b], axis=1)), W_CAT))

    simulated, realized, step, xs = _calibrated(function(model))
    (concat,) = [v for _, v in main_bindings(realized) if op_name(v) == "concat"]
    assert str(concat.args[0].fields[0].ty.dtype) == "int8" and str(concat.args[0].fields[1].ty.dtype) == "int8"
    assert "right_shift" not in _ops(realized)[_ops(realized).index("concat"):]  # no int32 requantize after it
    for x in xs:
        assert np.abs(_run(simulated, x) - _run(realized, x)).max() <= _one_step_into(W_CAT, step)


def test_a_residual_add_of_8_bit_inputs_rescales_them_in_int32():
    """Two int8 branches brought to the add's common scale: an 8-bit value times a 22-bit
    multiplier fits int32, so no int64 arithmetic (AVX2 and NEON do not vectorize it), within one
    step of the simulation."""
    from qcompile.ir import main_bindings

    def model(bb, x):
        a = bb.emit(R.add(bb.emit(conv(x, W1)), relax.const(B1)))
        b = bb.emit(R.multiply(bb.emit(R.nn.relu(bb.emit(conv(x, W1)))), relax.const(3.0)))
        return bb.emit(conv(bb.emit(R.add(a, b)), W2))

    simulated, realized, step, xs = _calibrated(function(model))
    from qcompile.ir import op_name, tensor_dtype

    defs = dict(main_bindings(realized))
    calls = []
    relax.analysis.post_order_visit(realized["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) else None)

    def value(e):
        return defs.get(e, e)

    # right_shift(add(multiply(astype(x8), M), R), s), nested or bound to variables
    multiplies = [value(value(c.args[0]).args[0]) for c in calls
                  if op_name(c) == "right_shift" and op_name(value(c.args[0])) == "add"]
    sources = [value(m.args[0]) for m in multiplies if op_name(m) == "multiply"]
    eight_bit = [a for a in sources if op_name(a) == "astype" and tensor_dtype(a.args[0]) in ("int8", "uint8")]
    assert len(eight_bit) >= 2  # both branches brought to the add's common scale
    assert {str(a.attrs.dtype) for a in eight_bit} == {"int32"}  # in int32, not int64
    for x in xs:
        assert np.abs(_run(simulated, x) - _run(realized, x)).max() <= _one_step_into(W2, step)


@pytest.mark.parametrize("dtype, zp", [("int8", 0), ("int8", -7), ("uint8", 128), ("uint8", 3)])
def test_int32_fixed_point_rescales_every_8_bit_code_within_int32_and_to_the_nearest_integer(dtype, zp):
    from qcompile.quantize.realize import int32_fixed_point

    info = np.iinfo(dtype)
    codes = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64) - zp
    span = int(np.abs(codes).max())
    assert int32_fixed_point(np.float64(2.0**-12), span) is None  # its shift would pass 30: int64 instead
    for ratio in np.exp2(RNG.uniform(-9, 17, 200)):  # from a branch far below the other's range to a common scale
        m, n = int32_fixed_point(np.float64(ratio), span)
        products = codes * int(m) + (1 << (int(n) - 1))
        assert np.abs(products).max() < 2**31
        got = products >> int(n)
        # a 22-bit multiplier (M in [2**21, 2**22)): relative error under 2**-21, plus the rounding
        assert np.abs(got - codes * ratio).max() <= 0.5 + float(np.abs(codes * ratio).max()) * 2.0**-21
    assert int32_fixed_point(np.float64(2.0**24), span) is None  # no shift of at least 1 keeps it in int32
