"""Quantization parameters: scales and zero points from ranges, per tensor or per channel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = np.float32(1e-8)


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray  # float32, shape () per tensor or (C,) per channel
    zero_point: np.ndarray  # int32, same shape
    dtype: str  # "int8" or "uint8"
    axis: int | None = None  # channel axis for per-channel parameters

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.dtype).max)

    def _bcast(self, x: np.ndarray, v: np.ndarray) -> np.ndarray:
        if self.axis is None:
            return v
        shape = [1] * x.ndim
        shape[self.axis] = -1
        return v.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        scale, zp = self._bcast(x, self.scale), self._bcast(x, self.zero_point)
        return np.clip(np.round(x / scale) + zp, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zp = self._bcast(q, self.scale), self._bcast(q, self.zero_point)
        return ((q.astype(np.int32) - zp) * scale).astype(np.float32)


def activation_qparams(lo: float, hi: float, symmetric: bool = True) -> QParams:
    """Per-tensor parameters for an activation range: symmetric int8 (zero point 0) or
    asymmetric uint8 (the range is widened to contain 0, so 0.0 is exactly representable)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        scale = max(max(-lo, hi) / 127.0, float(EPS))
        return QParams(np.float32(scale), np.int32(0), "int8")
    scale = max((hi - lo) / 255.0, float(EPS))
    zero_point = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(np.float32(scale), np.int32(zero_point), "uint8")


def weight_qparams(w: np.ndarray, axis: int | None = 0, bits: int = 8) -> QParams:
    """Symmetric weight parameters, per output channel (`axis`) or per tensor (axis=None), for
    `bits`-bit codes stored as int8. The range is [-(2**(bits-1) - 1), 2**(bits-1) - 1] (127 for
    int8, 7 for int4) so that -w quantizes as exactly as w."""
    qmax = float(2 ** (bits - 1) - 1)
    if axis is None:
        amax = np.float32(np.abs(w).max())
        return QParams(np.maximum(amax / qmax, EPS).astype(np.float32), np.int32(0), "int8")
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce).astype(np.float32)
    scale = np.maximum(amax / qmax, EPS).astype(np.float32)
    return QParams(scale, np.zeros_like(scale, dtype=np.int32), "int8", axis)
