"""int4 block-wise weights (weight-only): codes in [-8, 7], one float scale per group of
`group_size` weights along K, eight codes per int32 word, as onnxruntime's MatMulNBits and
MLC-LLM's q4f16.

    x[M, K] float @ W[K, N]  ->  y[m, n] = sum_k x[m, k] * code[n, k] * scale[n, k // group_size]

The scale of each group comes from a small search over clipping ratios (the MSE-best of
max|w| / d for d in 5..8 in 0.25 steps), which keeps the group's outliers where plain
`max|w| / 7` rounding would waste the grid on them; it is never worse than plain rounding,
since d = 7 is one of the candidates."""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

GROUP_SIZES = (32, 64, 128)
CLIP_DIVISORS = np.linspace(5.0, 8.0, 13)  # includes 7: plain symmetric rounding


def _groups(w_nk: np.ndarray, group_size: int) -> np.ndarray:
    """W as [N, K] -> [N, G, group_size] with K zero-padded to whole groups."""
    n, k = w_nk.shape
    g = -(-k // group_size)
    padded = np.zeros((n, g * group_size), np.float32)
    padded[:, :k] = w_nk
    return padded.reshape(n, g, group_size)


def quantize_blockwise(w_kn: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """W[K, N] (a matmul's weight) -> (codes int8 [N, Kp] in [-8, 7], scales float32 [N, G]),
    Kp = G * group_size (the padding's codes are 0)."""
    whole_k = -(-w_kn.shape[0] // WORD_CODES) * WORD_CODES  # K in whole 32-bit words of codes
    # 0, or a group longer than K: one group spanning K (per output channel), not a padded one
    group_size = whole_k if group_size <= 0 else min(group_size, whole_k)
    groups = _groups(np.ascontiguousarray(w_kn.T, np.float32), group_size)
    amax = np.abs(groups).max(-1, keepdims=True)
    best_err = np.full(amax.shape, np.inf, np.float32)
    best_scale = np.ones(amax.shape, np.float32)
    for d in CLIP_DIVISORS:
        scale = np.where(amax > 0, amax / d, 1.0).astype(np.float32)
        codes = np.clip(np.round(groups / scale), -8, 7)
        err = np.square(codes * scale - groups).sum(-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    codes = np.clip(np.round(groups / best_scale), -8, 7).astype(np.int8)
    n, g, gs = groups.shape
    return codes.reshape(n, g * gs), best_scale[..., 0]


def dequantize_blockwise(codes: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """The float W[K, N] that (codes, scales) stand for."""
    n, kp = codes.shape
    g = scales.shape[1]
    w = codes.reshape(n, g, kp // g).astype(np.float32) * scales[..., None]
    return np.ascontiguousarray(w.reshape(n, kp)[:, :k].T)


WORD_CODES = 8  # codes per int32 word in the portable kernel's operand


def pack_int4_words(codes: np.ndarray) -> np.ndarray:
    """[N, Kp] codes -> int32 [N, Kp/8], code 8i+j in bits 4j..4j+3 of word i: 32-bit words, since
    WGSL and some GPU paths have no 8-bit storage."""
    n, kp = codes.shape
    nibbles = (codes.astype(np.int64) & 0xF).reshape(n, kp // WORD_CODES, WORD_CODES)
    return (nibbles << (4 * np.arange(WORD_CODES))).sum(-1).astype(np.uint32).view(np.int32)


def unpack_int4_words(words: np.ndarray) -> np.ndarray:
    """The inverse of pack_int4_words (sign-extended codes)."""
    v = words.astype(np.int64)[..., None] >> (4 * np.arange(WORD_CODES))
    codes = ((v & 0xF) ^ 8) - 8
    return codes.reshape(*words.shape[:-1], -1).astype(np.int8)


# From this many rows of x the kernel decodes the weights once per call into a float buffer the
# matmul then reads (the decode costs K x N once); with fewer it decodes each code where the
# matmul uses it (no buffer: a matrix-vector product reads half a byte per weight). Measured on one
# AVX-512 core against fp32's time: 1 and 2 rows 1.1x decoded in place (1.6x once); 4 and 8 rows
# 2.2x in place, 1.4-1.6x once; 17 to 800 rows 1.9-2.2x in place, 0.9-1.1x once.
DECODE_ONCE_ROWS = 4


def portable_operands(codes: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes [N, Kp], scales [N, G]) -> the portable kernel's operands, K-major: words int32
    [Kp/8, N] and scales [G, N]. Along N they are contiguous, so a vector of output channels loads
    its codes and scales in one piece and decodes them with one shift (the same k for every lane)."""
    return (np.ascontiguousarray(pack_int4_words(codes).T), np.ascontiguousarray(scales.T))


def int4_matmul_te(x, words, scales):
    """The int4 block-wise kernel: x[M, K] float32, codes as int32 words [Kp/8, N] and scales
    float32 [G, N] (portable_operands) -> y[M, N]. Every target schedules it as it is: the CPU
    default schedule vectorizes it along N (see DECODE_ONCE_ROWS for what that costs against fp32),
    CUDA's and WebGPU's rules likewise."""
    m, k = x.shape
    n_words, n = words.shape
    group_size = int(n_words) * WORD_CODES // int(scales.shape[0])
    r = te.reduce_axis((tirx.IntImm("int64", 0), k), "k")

    def code(kk, j):  # shift the code to the top nibble, then arithmetic-shift it down: sign-extended
        shift = (28 - 4 * (kk % WORD_CODES)).astype("int32")
        return (words[kk // WORD_CODES, j] << shift) >> 28

    if isinstance(m, tirx.IntImm) and int(m) >= DECODE_ONCE_ROWS:
        w = te.compute((k, n), lambda kk, j: code(kk, j).astype("float32") * scales[kk // group_size, j], name="decode")
        return te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r), name="int4_matmul")
    return te.compute(
        (m, n),
        lambda i, j: te.sum(x[i, r] * code(r, j).astype("float32") * scales[r // group_size, j], axis=r),
        name="int4_matmul")
