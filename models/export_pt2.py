"""Write the project's transformers as torch.export programs (.pt2) beside their ONNX files, from
the trained weights the ONNX files hold (no retraining): each network is rebuilt from its train.py,
its parameters filled from the ONNX initializers (by name, or for the Linear layers the exporter
stored as anonymous MatMul weights, in forward order), its outputs checked against onnxruntime's
on real inputs, then exported with a dynamic batch.

    python models/export_pt2.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _train_module(folder: str):
    spec = importlib.util.spec_from_file_location(f"{folder}_train", HERE / folder / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_from_onnx(model, onnx_path: Path):
    """`model`'s parameters and buffers from the ONNX file it was exported to."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    named = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    anonymous = [named[n.input[1]] for n in graph.node
                 if n.op_type == "MatMul" and n.input[1] in named and n.input[1].startswith("onnx::")]
    state = {}
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for name in linears:
        if f"{name}.weight" not in named:
            state[f"{name}.weight"] = torch.from_numpy(anonymous.pop(0).T.copy())  # MatMul's [K, N] is W.T
    buffers = dict(model.named_buffers())
    for name, tensor in model.state_dict().items():
        if name in state:
            continue
        if name not in named and name in buffers:  # a constant the exporter deduplicated (the causal masks)
            state[name] = tensor
        else:
            state[name] = torch.from_numpy(named[name].reshape(tensor.shape).copy())
    if anonymous:
        raise ValueError(f"{onnx_path}: {len(anonymous)} MatMul weights left unassigned")
    model.load_state_dict(state)
    return model.eval()


def export(folder: str, onnx_name: str, input_name: str, sample: np.ndarray) -> Path:
    import onnxruntime as ort
    import torch

    onnx_path = HERE / folder / onnx_name
    model = load_from_onnx(_train_module(folder).network(), onnx_path)
    with torch.no_grad():
        ours = model(torch.from_numpy(sample)).numpy()
    reference = ort.InferenceSession(str(onnx_path)).run(None, {input_name: sample})[0]
    err = np.abs(ours - reference).max() / np.abs(reference).max()
    if err > 1e-5:
        raise ValueError(f"{onnx_path}: the rebuilt network differs from the ONNX model by {err:.2e}")
    batch = torch.export.Dim("N", min=1, max=1024)
    program = torch.export.export(model, (torch.from_numpy(sample),), dynamic_shapes={input_name: {0: batch}})
    out = onnx_path.with_suffix(".pt2")
    torch.export.save(program, str(out))
    print(f"wrote {out} (largest difference from onnxruntime {err:.1e} of the output's magnitude)")
    return out


def main() -> None:
    from qcompile.examples import LM_CONTEXT, char_windows, fashion_mnist, python_source_text

    x, _ = fashion_mnist("t10k")
    export("fashion_vit", "fashion_mnist_vit.onnx", "image", x[:8])
    export("char_lm", "char_lm.onnx", "tokens", char_windows(python_source_text("test"), 8)[:, :LM_CONTEXT])


if __name__ == "__main__":
    main()
