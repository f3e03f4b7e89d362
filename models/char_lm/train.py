"""Train a small character-level, decoder-only language model on the Python standard library's own
sources and export it to ONNX (char_lm.onnx, committed beside this script): the language model the
quantizer's transformer paths are measured on (perplexity and next-character accuracy on held-out
modules, qcompile.examples.python_source_text('test')).

The network (its blocks: models/transformer_block.py): ASCII codes (128) embedded to 96 channels with learned positions over a 64-character
window, three pre-norm blocks (LayerNorm, 4-head causal self-attention written out as Q·Kᵀ, a
constant causal mask added, Softmax and attention·V matmuls, a residual add; LayerNorm, a GELU MLP
of 4x width, a residual add), a final LayerNorm and a linear head giving every position's
next-character logits.

    python models/char_lm/train.py [--steps 3000] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # models/transformer_block.py
from transformer_block import block  # noqa: E402

ONNX_PATH = HERE / "char_lm.onnx"


def network(vocab: int = 128, context: int = 64, dim: int = 96, depth: int = 3, heads: int = 4):
    import torch
    import torch.nn as nn

    class CharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
            self.blocks = nn.Sequential(*[block(dim, heads, 4, context) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab)

        def forward(self, tokens):
            return self.head(self.norm(self.blocks(self.embed(tokens) + self.pos)))

    return CharLM()


def main() -> None:
    import numpy as np
    import torch

    from qcompile.examples import LM_CONTEXT, char_windows, lm_metrics, python_source_text

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    train_text = python_source_text("train")
    held_out = char_windows(python_source_text("test"), 512)
    model = network(context=LM_CONTEXT)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps)
    start = time.time()
    for step in range(args.steps):
        model.train()
        batch = torch.from_numpy(char_windows(train_text, args.batch, seed=step))
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 500 == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                out = model(torch.from_numpy(held_out[:, :-1])).numpy()
            m = lm_metrics(out, held_out[:, 1:])
            print(f"step {step + 1}: loss {loss.item():.3f}, held-out accuracy {m['accuracy']:.1f}%, "
                  f"perplexity {m['perplexity']:.2f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    torch.onnx.export(model, torch.zeros(1, LM_CONTEXT, dtype=torch.int64), str(ONNX_PATH), input_names=["tokens"],
                      output_names=["logits"], dynamic_axes={"tokens": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                      dynamo=False)
    print(f"wrote {ONNX_PATH} ({np.round(ONNX_PATH.stat().st_size / 1e6, 2)} MB)")


if __name__ == "__main__":
    main()
