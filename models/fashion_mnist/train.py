"""Train the small Fashion-MNIST CNN that the accuracy benchmark and the tests quantize, and
export it to ONNX (fashion_mnist_cnn.onnx, committed beside this script).

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), 60k train images.
The network has what a quantizer must handle: conv + batch norm + ReLU, a residual add,
max pooling, global average pooling and a fully connected layer.

    python models/fashion_mnist/train.py [--epochs 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "fashion_mnist_cnn.onnx"


def network():
    import torch.nn as nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x) + x)

    return nn.Sequential(
        block(1, 16), block(16, 32), nn.MaxPool2d(2),
        block(32, 48), Residual(48), nn.MaxPool2d(2),
        block(48, 96), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10),
    )


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    from qcompile.examples import fashion_mnist

    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    model = network()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * (len(x_train) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(len(xt) // 128):
            idx = perm[i * 128:(i + 1) * 128]
            xb = xt[idx]
            if epoch < args.epochs - 1:  # light augmentation: horizontal flips
                flip = torch.rand(len(xb)) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(torch.from_numpy(x_test[i:i + 1000])).argmax(1) for i in range(0, len(x_test), 1000)])
        print(f"epoch {epoch + 1}: test accuracy {(pred.numpy() == y_test).mean() * 100:.2f}%", flush=True)
    model.eval()
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(ONNX_PATH), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    print(f"wrote {ONNX_PATH}")


if __name__ == "__main__":
    main()
