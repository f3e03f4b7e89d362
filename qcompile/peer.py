"""The peers qcompile is measured against: onnxruntime's float session and its own int8
quantization (quantize_static, QDQ) at settings comparable to qcompile's defaults; OpenVINO's model
and NNCF's int8 of it."""

from __future__ import annotations

from pathlib import Path

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def ort_quantize(model, out, calib, input_name: str | None = None, method: str = "minmax", batch: int = 1,
                 percentile: float = 99.99, symmetric: bool = True) -> Path:
    """`model` quantized by onnxruntime into `out`: QDQ, int8 activations (symmetric, or with a zero
    point) and per-channel int8 symmetric weights. `calib`: a list of feeds (input name -> array), or
    one input's samples on axis 0 (with `input_name`), fed in batches of `batch`."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = calib if input_name is None else [{input_name: calib[i:i + batch]} for i in range(0, len(calib), batch)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    out = Path(out)
    pre = out.with_suffix(".pre.onnx")
    source = Path(model)
    proto = onnx.load(str(model))
    # Per-channel QDQ needs DequantizeLinear's axis, which opset 13 added: below it onnxruntime
    # writes a model it then refuses to load (a text recognizer exported at opset 12).
    if next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13) < 13:
        source = out.with_suffix(".opset13.onnx")
        onnx.save(version_converter.convert_version(proto, 13), str(source))
    quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    if source != Path(model):
        source.unlink()
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                   "CalibPercentile": percentile, "CalibMovingAverage": False})
    pre.unlink(missing_ok=True)
    return out


def qdq_reference(model):
    """An onnxruntime session that runs a QDQ model as its graph is written: DequantizeLinear, the
    float op, QuantizeLinear, with graph optimizations off. Its results are the same on every CPU.
    onnxruntime's own fused int8 kernels are not: on CPUs without VNNI they multiply with
    `vpmaddubsw`, whose int16 pair sums saturate (its `reduce_range` option exists for that), and
    they disagreed with this reference on up to 17% of the Fashion-MNIST test images (AVX2 EPYC)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def openvino_int8(source, calib: list[dict]):
    """OpenVINO's model of `source` (an .onnx/.tflite path or a torch ExportedProgram) at the shapes
    of the feeds `calib`, NNCF's int8 of it (its defaults, calibrated on `calib`), and a function
    that names a feed's arrays as the model's inputs (a converted program names them its own way:
    they are matched by position). Returns (core, float model, int8 model, naming function)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(source)) if isinstance(source, (str, Path)) else ov.convert_model(source)
    names = [p.get_any_name() for p in model.inputs]

    def named(feed: dict) -> dict:
        return {n: feed[n] for n in names} if set(names) <= set(feed) else dict(zip(names, feed.values()))

    model.reshape({n: list(v.shape) for n, v in named(calib[0]).items()})
    quantized = nncf.quantize(model, nncf.Dataset([named(f) for f in calib]), subset_size=len(calib))
    return core, model, quantized, named
