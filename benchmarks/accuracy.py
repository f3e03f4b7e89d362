"""Accuracy of qcompile int8 against float and onnxruntime's quantize_static, on real data.

    python benchmarks/accuracy.py [--quick] [--methods minmax,percentile,entropy,mse]

Writes benchmarks/results/accuracy.md. Models:
  1. the Fashion-MNIST CNN of models/fashion_mnist (trained by its train.py): accuracy on all
     10k test images, calibrated on 1000 training images;
  2. EfficientNet-Lite0 with its ImageNet weights: top-1 on the 20 labeled ImageNet photos of
     the foolbox wheel, and top-1 agreement with float on every photo shipped with scikit-image,
     scikit-learn and matplotlib; calibrated on other views (random crops, flips, brightness)
     of those photos and on the foolbox CIFAR photos, never on the evaluated centre crops.
onnxruntime is quantized at the same settings: QDQ, int8 symmetric activations, int8 symmetric
per-channel weights, the same calibration data and method (it has no MSE method)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import datasets as D  # noqa: E402

from qcompile.backends.cpu.run import load_library  # noqa: E402
from qcompile.peer import ORT_METHODS, ort_quantize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy.md"
PERCENTILE = 99.99
ORT_ENTROPY_NOTE = ("Note: onnxruntime's Entropy method, with its default num_bins=128 and num_quantized_bins=128, "
                    "tries a single threshold (the whole range), so its rows equal its MinMax rows; qcompile's "
                    "entropy searches thresholds on a 2048-bin histogram (TensorRT's KL method).")


def tvm_predict(artifact: Path, batches: list[np.ndarray], input_name: str) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(load_library(artifact), tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(np.ascontiguousarray(b))).numpy() for b in batches])


def ort_predict(model: Path, batches: list[np.ndarray], input_name: str) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: b})[0] for b in batches])


def qcompile_build(model: Path, out: Path, shape: list[int], input_name: str, calib: np.ndarray | None,
                   method: str | None, workdir: Path):
    from qcompile.builder import build

    quantize, calib_path = None, None
    if method is not None:
        calib_path = workdir / "calib.npz"
        np.savez(calib_path, **{input_name: calib})
        quantize = {"mode": "static", "method": method, "percentile": PERCENTILE, "progress": False}
    return build(model, "host", out, input_shapes={input_name: shape}, quantize=quantize, calib=calib_path)


def fashion(methods: list[str], workdir: Path, quick: bool) -> dict:
    x_test, y_test = D.fashion_mnist("t10k")
    x_train, _ = D.fashion_mnist("train")
    if quick:
        x_test, y_test = x_test[:1000], y_test[:1000]
    batch = 500
    calib = x_train[:1000]
    batches = [x_test[i:i + batch] for i in range(0, len(x_test), batch)]
    model = D.FASHION_ONNX
    rows = []

    def score(name, logits, seconds, extra=""):
        acc = float((logits.argmax(1) == y_test).mean() * 100)
        rows.append({"variant": name, "accuracy": acc, "seconds": seconds, "note": extra})
        print(f"fashion-mnist {name:<32} {acc:6.2f}%  ({seconds:.0f} s)", flush=True)

    t = time.time()
    score("float (onnxruntime fp32)", ort_predict(model, batches, "image"), time.time() - t)
    t = time.time()
    res = qcompile_build(model, workdir / "fm_fp32.so", [batch, 1, 28, 28], "image", None, None, workdir)
    score("qcompile fp32", tvm_predict(res.artifact, batches, "image"), time.time() - t)
    sizes = {"float": res.metadata["weight_bytes"]}
    for method in methods:
        t = time.time()
        res = qcompile_build(model, workdir / f"fm_{method}.so", [batch, 1, 28, 28], "image", calib, method, workdir)
        sizes[method] = res.metadata["weight_bytes"]
        score(f"qcompile int8 {method}", tvm_predict(res.artifact, batches, "image"), time.time() - t)
        if method in ORT_METHODS:
            t = time.time()
            q = ort_quantize(model, workdir / f"fm_ort_{method}.onnx", calib, "image", method, batch)
            score(f"onnxruntime int8 {method}", ort_predict(q, batches, "image"), time.time() - t)
    return {"rows": rows, "sizes": sizes, "n_test": len(y_test)}


def efficientnet(methods: list[str], workdir: Path, quick: bool) -> dict:
    rng = np.random.default_rng(0)
    labeled = D.imagenet_labeled()
    photos = D.real_photos()
    if quick:
        labeled, photos = labeled[:5], photos[:5]
    calib_views = [v for _, img in photos for v in D.augmented_views(img, 2, rng)]
    calib_views += [D.preprocess(img.resize((224, 224))) for img in D.foolbox_cifar()[: 8 if quick else 40]]
    calib = np.concatenate(calib_views)
    eval_batches = [D.preprocess(img) for _, img, _ in labeled] + [D.preprocess(img) for _, img in photos]
    labels = np.array([label for _, _, label in labeled])
    names = [n for n, _, _ in labeled] + [n for n, _ in photos]
    model = D.efficientnet_lite0_onnx(workdir / "efficientnet_lite0.onnx")
    rows = []
    reference = {}

    def score(name, logits, seconds):
        top1 = logits.argmax(1)
        if not reference:
            z = np.exp(logits - logits.max(1, keepdims=True))
            reference.update(top1=top1, prob=(z / z.sum(1, keepdims=True)).max(1))
        acc = float((top1[:len(labels)] == labels).mean() * 100)
        agree = float((top1 == reference["top1"]).mean() * 100)
        flipped = [(names[i], float(reference["prob"][i])) for i in np.flatnonzero(top1 != reference["top1"])]
        rows.append({"variant": name, "top1": acc, "agreement": agree, "seconds": seconds, "flipped": flipped})
        print(f"efficientnet-lite0 {name:<32} top-1 {acc:5.1f}%  agreement {agree:5.1f}%  ({seconds:.0f} s)", flush=True)

    t = time.time()
    score("float (onnxruntime fp32)", ort_predict(model, eval_batches, "image"), time.time() - t)
    t = time.time()
    res = qcompile_build(model, workdir / "en_fp32.so", [1, 3, 224, 224], "image", None, None, workdir)
    score("qcompile fp32", tvm_predict(res.artifact, eval_batches, "image"), time.time() - t)
    sizes = {"float": res.metadata["weight_bytes"]}
    for method in methods:
        t = time.time()
        res = qcompile_build(model, workdir / f"en_{method}.so", [1, 3, 224, 224], "image", calib, method, workdir)
        sizes[method] = res.metadata["weight_bytes"]
        score(f"qcompile int8 {method}", tvm_predict(res.artifact, eval_batches, "image"), time.time() - t)
        if method in ORT_METHODS:
            t = time.time()
            q = ort_quantize(model, workdir / f"en_ort_{method}.onnx", calib, "image", method, 1)
            score(f"onnxruntime int8 {method}", ort_predict(q, eval_batches, "image"), time.time() - t)
    return {"rows": rows, "sizes": sizes, "n_labeled": len(labels), "n_photos": len(photos), "n_calib": len(calib)}


def write(fm: dict | None, en: dict | None, quick: bool) -> None:
    import platform

    import onnxruntime
    import tvm

    lines = ["# Accuracy: qcompile int8 vs float and onnxruntime int8", "",
             f"Generated by `python benchmarks/accuracy.py{' --quick' if quick else ''}` on {platform.machine()} "
             f"(tvm {tvm.__version__}, onnxruntime {onnxruntime.__version__}). Settings for both quantizers: int8 "
             "symmetric activations (per tensor), int8 symmetric per-channel weights, the same calibration data; "
             f"percentile = {PERCENTILE}. onnxruntime has no MSE calibration.", ""]
    if fm:
        base = fm["rows"][0]["accuracy"]
        lines += [f"## Fashion-MNIST CNN — accuracy on {fm['n_test']} test images", "",
                  "| variant | accuracy | Δ vs float (points) |", "|---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['accuracy']:.2f}% | {r['accuracy'] - base:+.2f} |" for r in fm["rows"]]
        lines += ["", _sizes(fm["sizes"]), ""]
    if en:
        lines += [f"## EfficientNet-Lite0 (ImageNet) — top-1 on {en['n_labeled']} labeled ImageNet photos (foolbox), "
                  f"agreement with float top-1 on those and {en['n_photos']} more photos (scikit-image, scikit-learn, "
                  f"matplotlib); {en['n_calib']} calibration views", "",
                  "| variant | top-1 (labeled) | top-1 agreement with float |", "|---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['top1']:.1f}% | {r['agreement']:.1f}% |" for r in en["rows"]]
        n_all = en["n_labeled"] + en["n_photos"]
        probs = [p for r in en["rows"] for _, p in r["flipped"]]
        lines += ["", _sizes(en["sizes"]), "",
                  f"One image is {100 / en['n_labeled']:.1f} points of top-1 and {100 / n_all:.1f} points of agreement, "
                  "so a difference of one image is within the noise of so small a set. The images whose top-1 flipped "
                  "(float's own top-1 probability in brackets):", ""]
        lines += [f"- {r['variant']}: " + (", ".join(f"{n} ({p:.2f})" for n, p in r["flipped"]) or "none")
                  for r in en["rows"] if r["flipped"]]
        if probs:
            lines += ["", f"Median float top-1 probability of a flipped image: {np.median(probs):.2f}."]
        lines += [""]
    lines += [_verdict(fm, en), "", ORT_ENTROPY_NOTE]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


def _sizes(sizes: dict) -> str:
    f = sizes["float"]
    parts = [f"{m}: {b / 1e6:.3f} MB ({b / f * 100:.0f}%)" for m, b in sizes.items() if m != "float"]
    return f"Weights in the artifact: float {f / 1e6:.3f} MB; int8 " + "; ".join(parts) + "."


def _verdict(fm: dict | None, en: dict | None) -> str:
    out = ["## Against the goals", ""]
    if fm:
        base = fm["rows"][0]["accuracy"]
        for r in fm["rows"]:
            if r["variant"].startswith("qcompile int8"):
                method = r["variant"].split()[-1]
                ort = next((o for o in fm["rows"] if o["variant"] == f"onnxruntime int8 {method}"), None)
                gap = base - r["accuracy"]
                line = f"- Fashion-MNIST, {method}: {gap:.2f} points below float (goal ≤ 0.30): {'met' if gap <= 0.3 else 'MISSED'}"
                if ort:
                    ort_gap = base - ort["accuracy"]
                    line += f"; onnxruntime {ort_gap:.2f} below float: {'as close or closer' if gap <= ort_gap else 'onnxruntime closer'}"
                out.append(line + ".")
    if en:
        for r in en["rows"]:
            if r["variant"].startswith("qcompile int8"):
                method = r["variant"].split()[-1]
                ort = next((o for o in en["rows"] if o["variant"] == f"onnxruntime int8 {method}"), None)
                line = f"- EfficientNet-Lite0, {method}: agreement with float {r['agreement']:.1f}%"
                if ort:
                    line += (f" vs onnxruntime {ort['agreement']:.1f}%: "
                             f"{'as close or closer' if r['agreement'] >= ort['agreement'] else 'onnxruntime closer'}")
                out.append(line + ".")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a fraction of the data, for a smoke run")
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--only", choices=["fashion", "efficientnet"], help="run one model")
    args = ap.parse_args()
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory(prefix="qcompile-accuracy-") as tmp:
        work = Path(tmp)
        fm = fashion(methods, work, args.quick) if args.only in (None, "fashion") else None
        en = efficientnet(methods, work, args.quick) if args.only in (None, "efficientnet") else None
        write(fm, en, args.quick)


if __name__ == "__main__":
    main()
