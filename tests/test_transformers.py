"""The quantizer on a transformer (the Fashion-MNIST ViT the project trained, on real test images):
attention's matmuls of two activations (Q·Kᵀ, attention·V) compile to int8 x int8 -> int32 kernels
beside the weight matmuls, LayerNorm and Softmax stay float islands, the build verifies against
onnxruntime, and top-1 stays within half a point of float."""

import json

import numpy as np
import onnxruntime as ort
import pytest

import qcompile
from qcompile.examples import REPO, fashion_mnist

VIT_ONNX = REPO / "models" / "fashion_vit" / "fashion_mnist_vit.onnx"
BATCH = 100


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vit")
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    np.savez(tmp / "calib.npz", image=x_train[:BATCH])
    result = qcompile.build(VIT_ONNX, "host", tmp / "int8.so", input_shapes={"image": [BATCH, 1, 28, 28]},
                            quantize={"method": "percentile", "progress": False}, calib=tmp / "calib.npz",
                            report=tmp / "report.json")
    return {"result": result, "report": json.loads((tmp / "report.json").read_text()),
            "x": x_test[:1000], "y": y_test[:1000], "artifact": tmp / "int8.so"}


def test_attention_matmuls_of_two_activations_are_int8_kernels(vit):
    compiled = {layer["name"]: layer for layer in vit["report"]["compiled_layers"]}
    two_activation = [layer for layer in vit["report"]["layers"]
                      if layer["op"] == "matmul" and len(layer["inputs"]) == 2 and not layer.get("weight")]
    assert len(two_activation) == 8  # Q·Kᵀ and attention·V in each of the four blocks
    for layer in two_activation:
        assert layer["precision"] == "int8"
        assert compiled[layer["name"]]["input_dtype"] in ("int8", "uint8")
        assert compiled[layer["name"]]["output_dtype"] == "int32"


def test_vit_int8_verifies_and_keeps_top1(vit):
    verification = vit["report"]["verification"]
    assert verification["verified"] and verification["quantized"]
    reference = ort.InferenceSession(str(VIT_ONNX))
    session = qcompile.load(vit["artifact"])
    x, y = vit["x"], vit["y"]
    float_top1 = np.concatenate([reference.run(None, {"image": x[i:i + BATCH]})[0] for i in range(0, len(x), BATCH)])
    int8_top1 = np.concatenate([session({"image": x[i:i + BATCH]})["logits"] for i in range(0, len(x), BATCH)])
    float_acc = (float_top1.argmax(1) == y).mean() * 100
    int8_acc = (int8_top1.argmax(1) == y).mean() * 100
    assert float_acc > 80
    assert int8_acc >= float_acc - 0.5, (float_acc, int8_acc)
