"""The quantizer on a real CNN (the Fashion-MNIST model the project trained, on real test
images): integer kernels end to end, a quarter of the weights, accuracy kept, the simulate mode,
pre-quantized QDQ models, dynamic / weight-only modes, the CLI and the Raspberry Pi 5."""

import json

import numpy as np
import onnx
import pytest
import tvm
from conftest import requires
from onnx import TensorProto, helper, numpy_helper
from test_cli import assert_one_line_error, qc

import qcompile
from qcompile.backends import host_engine
from qcompile.backends.cpu.run import load_library
from qcompile.backends.families import FAMILIES
from qcompile.backends.packed.pack import pack_weight, pair_sums_fit
from qcompile.examples import fashion_mnist, fashion_mnist_cnn_onnx
from qcompile.frontends import load_model
from qcompile.ir import main_bindings, op_name, tensor_dtype
from qcompile.passes import float_passes
from qcompile.quantize import QuantConfig, quantize_module
from qcompile.quantize.params import weight_qparams

FASHION_ONNX = fashion_mnist_cnn_onnx()

BATCH = 100
COMPUTE = ("nn.conv2d", "matmul")


@pytest.fixture(scope="module")
def data():
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    return {"calib": x_train[:2 * BATCH], "x": x_test[:1000], "y": y_test[:1000]}


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, image=data["calib"])
    return path


def _build(tmp, name, **kw):
    return qcompile.build(kw.pop("model", FASHION_ONNX), kw.pop("target", "host"), tmp / f"{name}.so",
                          input_shapes={"image": kw.pop("shape", [BATCH, 1, 28, 28])}, **kw)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, calib_npz):
    tmp = tmp_path_factory.mktemp("fashion")
    return {
        "float": _build(tmp, "float"),
        "int8": _build(tmp, "int8", quantize={"method": "percentile", "progress": False}, calib=calib_npz,
                       report=tmp / "report.json"),
        "simulate": _build(tmp, "simulate", quantize={"mode": "simulate", "method": "percentile", "progress": False},
                           calib=calib_npz),
        "report": tmp / "report.json",
    }


def _predict(artifact, x):
    from tvm import relax

    vm = relax.VirtualMachine(load_library(artifact), tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + BATCH])).numpy() for i in range(0, len(x), BATCH)])


def _float_reads(mod, var, defs, seen):
    """Float bindings met walking back from `var` to the quantized ops (or the model input's
    quantize) that produce it."""
    if var in seen or var not in defs:
        return []
    seen.add(var)
    value = defs[var]
    if tensor_dtype(var) in ("float32", "float16"):
        return [f"{var.name} = {op_name(value)}"]
    if op_name(value) in COMPUTE or op_name(value) == "quantize":
        return []
    args = value.args if isinstance(value, tvm.relax.Call) else []
    found = []
    for a in args:
        for v in (a.fields if isinstance(a, tvm.relax.Tuple) else [a]):
            if isinstance(v, tvm.relax.Var):
                found += _float_reads(mod, v, defs, seen)
    return found


def test_realized_cnn_computes_in_int8_with_no_float_between_quantized_ops(data):
    imported = load_model(FASHION_ONNX, {"image": [BATCH, 1, 28, 28]})
    mod = tvm.transform.Sequential(float_passes())(imported.mod)
    realized, report = quantize_module(mod, imported.inputs, [{"image": data["calib"][:BATCH]}],
                                       QuantConfig(progress=False), imported.layer_names, engine=host_engine)
    defs = dict(main_bindings(realized))
    computes = [(v, val) for v, val in defs.items() if op_name(val) in COMPUTE]
    assert len(computes) == 6  # five convolutions and the classifier
    for var, value in computes:
        assert [tensor_dtype(a) for a in value.args[:2]] == ["int8", "int8"], var.name
        assert tensor_dtype(var) == "int32", var.name
        assert _float_reads(realized, value.args[0], defs, set()) == [], var.name
    floats = [op_name(val) for v, val in defs.items() if tensor_dtype(v) == "float32" and op_name(val)]
    assert floats == ["astype", "multiply"], floats  # float only at the end: the int32 logits, scaled
    assert {row["precision"] for row in report["layers"]} == {"int8"}


def test_int8_artifact_weights_are_a_quarter_and_report_lists_every_layer(artifacts):
    report = json.loads(artifacts["report"].read_text())
    assert report["weight_bytes"] < 0.3 * report["float_weight_bytes"]
    assert report["quantization"]["method"] == "percentile"
    convs = [row for row in report["layers"] if row["op"] in ("conv2d", "matmul")]
    assert len(convs) == 6 and all(row["precision"] == "int8" for row in convs)
    first = convs[0]
    assert first["inputs"][0]["scale"] > 0 and first["weight"]["channels"] == 16 and first["output"]["scale"] > 0
    assert {row["op"] for row in report["layers"]} >= {"conv2d", "matmul", "add", "mean"}
    assert all(row["input_dtype"] == "int8" for row in report["compiled_layers"])


def test_int8_accuracy_stays_close_to_float(artifacts, data):
    acc = {k: float((_predict(artifacts[k].artifact, data["x"]).argmax(1) == data["y"]).mean() * 100)
           for k in ("float", "int8")}
    assert acc["float"] > 85
    assert abs(acc["float"] - acc["int8"]) <= 1.0, acc


def test_simulate_mode_matches_the_integer_model(artifacts, data):
    x = data["x"][:300]
    sim, real = _predict(artifacts["simulate"].artifact, x), _predict(artifacts["int8"].artifact, x)
    assert (sim.argmax(1) == real.argmax(1)).mean() >= 0.99
    assert np.abs(sim - real).max() < 0.05 * np.abs(sim).max()
    assert artifacts["simulate"].metadata["layers"][0]["input_dtype"] == "float32"


def test_x86_avx2_int8_build_is_bit_identical_to_the_host_build(artifacts, calib_npz, data, tmp_path):
    """The AVX2 kernels (exact vpmaddwd) run on any x86-64 CPU here, AVX-512 VNNI or not: the
    x86-avx2 path is tested on every CI machine, and it computes what the host build computes."""
    avx2 = _build(tmp_path, "avx2", target="x86-avx2", quantize={"method": "percentile", "progress": False},
                  calib=calib_npz)
    assert avx2.metadata["schedule_family"] == "x86-avx2"
    x = data["x"][:200]
    assert np.array_equal(_predict(avx2.artifact, x), _predict(artifacts["int8"].artifact, x))


def test_7bit_weights_keep_accuracy(artifacts, calib_npz, data, tmp_path):
    """--weight-bits 7 (weights in [-63, 63], onnxruntime's reduce_range; the x86-avx2 build runs
    them on vpmaddubsw, test_int8_kernels): the model agrees with the 8-bit build's top-1 on nearly
    every image, and with its own float simulation."""
    w7 = _build(tmp_path, "w7", target="x86-avx2", quantize={"method": "percentile", "progress": False,
                                                               "weight_bits": 7}, calib=calib_npz)
    assert w7.metadata["quantization"]["weights"].startswith("int8 (7-bit range)")
    assert w7.metadata["verification"]["against_simulation"]
    x = data["x"]
    w7_top1, int8_top1 = _predict(w7.artifact, x).argmax(1), _predict(artifacts["int8"].artifact, x).argmax(1)
    assert (w7_top1 == int8_top1).mean() >= 0.98
    assert abs((w7_top1 == data["y"]).mean() - (int8_top1 == data["y"]).mean()) <= 0.01


@pytest.mark.parametrize("symmetric", [True, False])
def test_onnxruntime_qdq_model_is_realized_into_int8_kernels(tmp_path, data, symmetric):
    """Symmetric int8 activations, and onnxruntime's asymmetric ones (a zero point): both stay
    8-bit x 8-bit kernels and compute what the QDQ graph says, as onnxruntime runs it unfused (its
    fused int8 kernels saturate on CPUs without VNNI, so they are no reference: qcompile.peer)."""
    from qcompile.peer import ort_quantize, qdq_reference

    qdq = ort_quantize(FASHION_ONNX, tmp_path / "qdq.onnx", data["calib"][:100], "image", "minmax", batch=50,
                       symmetric=symmetric)
    result = _build(tmp_path, "qdq", model=qdq)
    assert result.metadata["quantization"]["mode"] == "pre-quantized (QDQ)"
    assert all(row["input_dtype"] == "int8" and row["output_dtype"] == "int32" for row in result.metadata["layers"])
    x = data["x"][:300]
    ours = _predict(result.artifact, x)
    theirs = qdq_reference(qdq).run(None, {"image": x})[0]
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.98
    assert np.abs(ours - theirs).max() <= 0.02 * np.abs(theirs).max()  # about one step of the int8 logits


def _mlp(path):
    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((64, 256)).astype("float32") * 0.1, rng.standard_normal((256, 32)).astype("float32") * 0.1
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("mode", ["dynamic", "weight-only"])
def test_dynamic_and_weight_only_int8_for_matmuls(tmp_path, mode):
    model = _mlp(tmp_path / "mlp.onnx")
    x = np.random.default_rng(4).standard_normal((8, 64)).astype("float32")
    ref = qcompile.run(qcompile.build(model, "host", tmp_path / "f.so").artifact, {"x": x}).outputs["y"]
    built = qcompile.build(model, "host", tmp_path / "q.so", quantize={"mode": mode})
    got = qcompile.run(built.artifact, {"x": x}).outputs["y"]
    assert built.metadata["weight_bytes"] < 0.3 * built.metadata["float_weight_bytes"]
    w1 = numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0])
    stored = weight_qparams(w1, axis=1).quantize(w1)
    family = built.metadata["schedule_family"]
    if mode == "dynamic" and FAMILIES[family].int8 is not None:  # int8 x int8: packed for the family's dot product
        oihw = stored.T.reshape(*stored.T.shape, 1, 1)
        stored = pack_weight(oihw, FAMILIES[family].int8.for_weights(lambda k: pair_sums_fit(oihw, k)))
    assert stored.tobytes()[:512] in built.artifact.read_bytes()  # the .so holds the int8 weights themselves
    if mode == "weight-only":  # and no float copy of them (constant folding would make one)
        assert built.artifact.stat().st_size < (tmp_path / "f.so").stat().st_size - 0.5 * built.metadata["float_weight_bytes"]
    assert np.abs(got - ref).max() < 0.03 * np.abs(ref).max()
    if mode == "dynamic":
        assert all(row["input_dtype"] == "int8" and row["output_dtype"] == "int32" for row in built.metadata["layers"])


def test_cli_builds_int8_with_a_report(tmp_path, calib_npz):
    proc = qc("build", FASHION_ONNX, "-o", tmp_path / "m.so", "--input-shape", f"image:{BATCH},1,28,28",
              "--quantize", "int8", "--calib", calib_npz, "--calib-method", "entropy", "--per-tensor",
              "--skip", "/9/Gemm", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["quantization"]["method"] == "entropy" and "per-tensor" in report["quantization"]["weights"]
    gemm = next(r for r in report["layers"] if r["name"] == "/9/Gemm")
    assert gemm["precision"] == "fp32"
    compiled = {r["name"]: r for r in report["compiled_layers"]}
    assert compiled["/9/Gemm"]["input_dtype"] == "float32" and compiled["/0/0.0/Conv"]["input_dtype"] == "int8"


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("extra, fragments", [
    (lambda d: [], ["needs calibration data", "--calib"]),
    (lambda d: ["--calib", _npz(d / "nan.npz", image=np.full((BATCH, 1, 28, 28), np.nan, "float32"))],
     ["nan.npz", "NaN or Inf", "image"]),
    (lambda d: ["--calib", _npz(d / "shape.npz", image=np.zeros((BATCH, 28, 28), "float32"))],
     ["shape.npz", "shape", "image"]),
    (lambda d: ["--calib", _npz(d / "empty.npz", image=np.zeros((0, 1, 28, 28), "float32"))],
     ["empty.npz", "empty"]),
    (lambda d: ["--calib", _npz(d / "ok.npz", image=np.zeros((BATCH, 1, 28, 28), "float32")), "--skip", "nope"],
     ["nope", "unknown layer"]),
    (lambda d: ["--calib", _npz(d / "ok.npz", image=np.zeros((BATCH, 1, 28, 28), "float32")), "--skip-op", "conv"],
     ["conv", "unknown op", "conv2d"]),
])
def test_cli_quantization_errors_are_one_line(tmp_path, extra, fragments):
    proc = qc("build", FASHION_ONNX, "-o", tmp_path / "m.so", "--input-shape", f"image:{BATCH},1,28,28",
              "--quantize", "int8", *extra(tmp_path))
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "m.so").exists()


@requires("qemu-aarch64")
@pytest.mark.parametrize("board", ["rpi5", "rpi4", "graviton3"])  # sdot; NEON smlal; smmla (+ sdot on odd widths)
def test_int8_artifact_for_arm_runs_under_qemu_like_the_host(tmp_path, calib_npz, data, board):
    x = data["x"][:BATCH]
    outs = {}
    for target in ("host", board):
        built = _build(tmp_path, target, target=target, quantize={"progress": False}, calib=calib_npz)
        assert built.metadata["layers"][0]["input_dtype"] == "int8"
        outs[target] = qcompile.run(built.artifact, {"image": x}).outputs["logits"]
    np.testing.assert_allclose(outs[board], outs["host"], atol=1e-5)
    assert (outs[board].argmax(1) == outs["host"].argmax(1)).all()
