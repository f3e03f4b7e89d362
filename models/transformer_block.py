"""The pre-norm transformer block both of the project's transformers use (models/fashion_vit and
models/char_lm): LayerNorm, multi-head self-attention written out as Q·Kᵀ, Softmax and attention·V
matmuls (optionally causal), a residual add; LayerNorm, a GELU MLP, a residual add. The parameter
names (norm1, attn.qkv, attn.proj, norm2, mlp.0, mlp.2) are what the committed ONNX files hold."""

from __future__ import annotations


def block(dim: int, heads: int, mlp_ratio: int, causal_context: int | None = None):
    """One block; with `causal_context`, each position attends to itself and earlier ones only."""
    import torch
    import torch.nn as nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            if causal_context is not None:
                # -1e4 rather than -inf: exp underflows to exactly 0 either way, and the constant stays finite
                mask = torch.triu(torch.full((causal_context, causal_context), -1e4), diagonal=1)
                self.register_buffer("mask", mask)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-2, -1) * (c // heads) ** -0.5
            att = torch.softmax(scores + self.mask if causal_context is not None else scores, dim=-1)
            return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(dim), Attention()
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    return Block()
