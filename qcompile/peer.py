"""onnxruntime, the peer qcompile is measured against: its float session and its own int8
quantization (quantize_static, QDQ) at settings comparable to qcompile's defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def ort_quantize(model, out, calib: np.ndarray, input_name: str, method: str = "percentile", batch: int = 1,
                 percentile: float = 99.99, symmetric: bool = True) -> Path:
    """`model` quantized by onnxruntime into `out`: QDQ, int8 activations (symmetric, or with a zero
    point) and per-channel int8 symmetric weights, calibrated on `calib` (one input, samples on axis 0) in batches of `batch`."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: calib[i:i + batch]} for i in range(0, len(calib), batch)])

        def get_next(self):
            return next(self.items, None)

    out = Path(out)
    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
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
