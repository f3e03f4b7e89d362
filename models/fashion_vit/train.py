"""Train a small vision transformer on Fashion-MNIST and export it to ONNX (fashion_mnist_vit.onnx,
committed beside this script): the transformer the quantizer's attention, LayerNorm, Softmax and
GELU paths are measured on.

Data: Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), 60k train images.
The network (its blocks: models/transformer_block.py): 4x4 patches (49 tokens) embedded to 64 channels, a class token and learned positions,
four pre-norm blocks (LayerNorm, 4-head self-attention written out as Q·Kᵀ, Softmax and attention·V
matmuls, a residual add; LayerNorm, a GELU MLP, a residual add), a final LayerNorm and a linear head.

    python models/fashion_vit/train.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # models/transformer_block.py
from transformer_block import block  # noqa: E402

ONNX_PATH = HERE / "fashion_mnist_vit.onnx"


def network(dim: int = 64, depth: int = 4, heads: int = 4, patch: int = 4):
    import torch
    import torch.nn as nn

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(1, dim, patch, stride=patch)
            tokens = (28 // patch) ** 2
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
            self.blocks = nn.Sequential(*[block(dim, heads, 2) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, 10)

        def forward(self, image):
            x = self.embed(image).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.norm(self.blocks(x))[:, 0])

    return ViT()


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from qcompile.examples import fashion_mnist

    x_train, y_train = fashion_mnist("train")
    x_test, y_test = fashion_mnist("t10k")
    model = network()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = args.epochs * (len(x_train) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xt))
        for i in range(len(xt) // 128):
            idx = perm[i * 128:(i + 1) * 128]
            xb = xt[idx]
            flip = torch.rand(len(xb)) < 0.5  # light augmentation: horizontal flips
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = torch.nn.functional.cross_entropy(model(xb), yt[idx], label_smoothing=0.1)
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
