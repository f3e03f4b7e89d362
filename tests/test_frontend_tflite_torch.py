"""TFLite and torch.export frontends, built and run on the host against their own references."""

import numpy as np
import pytest
import torch
from tflite_models import dense_relu_model

import qcompile
from qcompile import QCompileError
from qcompile.frontends import load_model


def test_tflite_builds_runs_and_matches_numpy(tmp_path):
    buf, w = dense_relu_model()
    path = tmp_path / "dense.tflite"
    path.write_bytes(buf)
    model = load_model(path)
    assert [(t.name, t.shape, t.dtype) for t in model.inputs] == [("x", (1, 8), "float32")]
    assert model.outputs[0].name == "y" and model.layer_names == ["y"]
    so = qcompile.build(path, "host", tmp_path / "dense.so").artifact
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    got = qcompile.run(so, {"x": x}).outputs["y"]
    np.testing.assert_allclose(got, np.maximum(x @ w["W"].T + w["b"], 0), atol=1e-5)


def test_tflite_unsupported_ops_and_broken_file(tmp_path):
    buf, _ = dense_relu_model(unsupported_op="LSH_PROJECTION")
    path = tmp_path / "bad.tflite"
    path.write_bytes(buf)
    with pytest.raises(QCompileError, match=r"unsupported ops: LSH_PROJECTION \(nodes: z\)"):
        load_model(path)
    path.write_bytes(buf[:8] + b"\0" * 40)
    with pytest.raises(QCompileError, match="bad.tflite: not a valid TFLite model"):
        load_model(path)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_torch_export_builds_runs_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    net = _Net().eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, 1, 8, 8),)), str(path))
    result = qcompile.build(path, "host", tmp_path / "net.so")
    assert result.metadata["format"] == "torch.export"
    assert [row["op"] for row in result.metadata["layers"]] == ["conv2d", "matmul"]
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    got = next(iter(qcompile.run(result.artifact, {"x": x}).outputs.values()))
    np.testing.assert_allclose(got, net(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_torch_export_unsupported_op_is_named(tmp_path):
    class Fft(torch.nn.Module):
        def forward(self, x):
            return torch.fft.rfft(x).abs()

    path = tmp_path / "fft.pt2"
    torch.export.save(torch.export.export(Fft(), (torch.randn(1, 8),)), str(path))
    with pytest.raises(QCompileError) as err:
        load_model(path)
    assert "fft.pt2: unsupported ops:" in str(err.value) and "fft" in str(err.value)


def test_not_a_torch_program(tmp_path):
    path = tmp_path / "junk.pt2"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(QCompileError, match="junk.pt2: not a torch.export program"):
        load_model(path)


def test_torch_export_program_quantizes_to_int8(tmp_path):
    """The quantizer works on Relax, whatever the frontend: a torch.export program in, int8 out."""
    torch.manual_seed(0)
    net = _Net().eval()
    path = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(1, 1, 8, 8),)), str(path))
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(8)]
    result = qcompile.build(path, "host", tmp_path / "q.so", quantize={"progress": False}, calib=calib)
    assert [(r["input_dtype"], r["output_dtype"]) for r in result.metadata["layers"]] == [("int8", "int32")] * 2
    x = rng.random((1, 1, 8, 8), dtype=np.float32)
    got = next(iter(qcompile.run(result.artifact, {"x": x}).outputs.values()))
    want = net(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
