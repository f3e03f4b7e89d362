"""Range estimation for activations: a histogram collected over calibration batches, and the
methods that turn it into a clipping range — minmax, percentile, entropy (KL), MSE."""

from __future__ import annotations

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")


class HistogramObserver:
    """Exact min/max plus a histogram of values over a symmetric range [-amax, amax] that widens
    as batches arrive (old counts are re-binned by their bin centres), and the mean batch (the
    average over calibration batches, in the tensor's own shape: axis 0 is not always the batch,
    e.g. the [time, direction, batch, hidden] output of a recurrent layer) that bias correction
    reads. Infinities and NaNs (masks, log of zero) are left out of the ranges: int8 cannot hold
    them, and one would make every bin infinitely wide."""

    def __init__(self, bins: int = 2048):
        self.bins = bins
        self.min = np.inf
        self.max = -np.inf
        self.amax = 0.0
        self.counts = np.zeros(bins, dtype=np.float64)
        self._sum = None
        self._samples = 0

    @property
    def mean_batch(self) -> np.ndarray | None:
        return None if self._sum is None else self._sum / self._samples

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size and (self._sum is None or self._sum.shape == x.shape):
            self._sum = x.astype(np.float64) if self._sum is None else self._sum + x
            self._samples += 1
        x = x.ravel()
        if not np.isfinite(x).all():
            x = x[np.isfinite(x)]
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        amax = max(abs(lo), abs(hi))
        if amax > self.amax:
            if self.counts.any():
                centres = self._centres()
                self.counts, _ = np.histogram(centres, bins=self.bins, range=(-amax, amax), weights=self.counts)
            self.amax = amax
        if self.amax == 0.0:
            self.counts[self.bins // 2] += x.size
            return
        hist, _ = np.histogram(x, bins=self.bins, range=(-self.amax, self.amax))
        self.counts += hist

    def _centres(self) -> np.ndarray:
        edges = np.linspace(-self.amax, self.amax, self.bins + 1)
        return (edges[:-1] + edges[1:]) / 2

    @property
    def empty(self) -> bool:
        return not np.isfinite(self.min)

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Counts of |x| over [0, amax] (bins/2 bins) and the bin width."""
        half = self.bins // 2
        folded = self.counts[half:] + self.counts[:half][::-1]
        return folded, self.amax / half


def _percentile_abs(obs: HistogramObserver, percentile: float) -> float:
    folded, width = obs.abs_histogram()
    cdf = np.cumsum(folded) / folded.sum()
    index = int(np.searchsorted(cdf, percentile / 100.0))
    return min((index + 1) * width, obs.amax)


def _entropy_threshold(obs: HistogramObserver, levels: int = 128) -> float:
    """TensorRT's KL-divergence calibration on the |x| histogram: the threshold whose clipped
    distribution P is best approximated by its `levels`-level quantized version Q."""
    folded, width = obs.abs_histogram()
    folded = folded.copy()
    # The exact zeros of a ReLU output pile up in bin 0 and would pull the threshold towards 0;
    # NVIDIA's pytorch-quantization levels that spike the same way.
    folded[0] = folded[1]
    n = len(folded)
    if n <= levels:
        return obs.amax
    best, best_i = np.inf, n
    for i in range(levels, n + 1, max(1, (n - levels) // 256)):
        p = folded[:i].copy()
        p[-1] += folded[i:].sum()
        nonzero = p > 0
        chunks = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for idx in chunks:
            mask = nonzero[idx]
            if mask.any():
                q[idx[mask]] = folded[:i][idx].sum() / mask.sum()
        if p.sum() == 0 or q.sum() == 0:
            continue
        pn, qn = p / p.sum(), q / q.sum()
        valid = nonzero & (qn > 0)
        kl = float(np.sum(pn[valid] * np.log(pn[valid] / qn[valid]))) + (np.inf if (nonzero & (qn == 0)).any() else 0.0)
        if kl < best:
            best, best_i = kl, i
    return best_i * width


def _mse_threshold(obs: HistogramObserver, qmax: int = 127) -> float:
    """The symmetric threshold that minimises the expected squared quantization error."""
    folded, width = obs.abs_histogram()
    centres = (np.arange(len(folded)) + 0.5) * width
    best, best_t = np.inf, obs.amax
    for t in np.linspace(obs.amax / 64, obs.amax, 128):
        scale = t / qmax
        dequant = np.minimum(np.round(centres / scale), qmax) * scale
        err = float(np.sum(folded * (centres - dequant) ** 2))
        if err < best:
            best, best_t = err, t
    return best_t


def estimate_range(obs: HistogramObserver, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
    """(lo, hi) clipping range for the observed tensor. Clipping methods choose a symmetric
    threshold t and clip the observed [min, max] to [-t, t]."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method '{method}'; choose from {', '.join(METHODS)}")
    if obs.empty:
        raise ValueError("no calibration data reached this tensor")
    if method == "minmax" or obs.amax == 0.0:
        return obs.min, obs.max
    if method == "percentile":
        t = _percentile_abs(obs, percentile)
    elif method == "entropy":
        t = _entropy_threshold(obs)
    else:
        t = _mse_threshold(obs)
    return max(obs.min, -t), min(obs.max, t)
