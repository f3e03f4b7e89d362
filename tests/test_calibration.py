"""Calibration algorithms (ranges, quantization parameters) and calibration data loading."""

import numpy as np
import pytest

from qcompile import QCompileError
from qcompile.frontends import TensorInfo
from qcompile.quantize.calib_data import load_calibration
from qcompile.quantize.params import activation_qparams, weight_qparams
from qcompile.quantize.ranges import HistogramObserver, estimate_range

RNG = np.random.default_rng(7)


def observe(*batches, bins=2048):
    obs = HistogramObserver(bins)
    for b in batches:
        obs.update(b)
    return obs


def test_minmax_is_exact_across_batches():
    a, b = RNG.standard_normal(1000).astype(np.float32), RNG.standard_normal(1000).astype(np.float32) * 3
    assert estimate_range(observe(a, b), "minmax") == (min(a.min(), b.min()), max(a.max(), b.max()))


def test_histogram_keeps_every_count_when_the_range_widens():
    obs = observe(RNG.uniform(-1, 1, 5000), RNG.uniform(-10, 10, 3000))
    assert obs.counts.sum() == 8000 and obs.amax == pytest.approx(10, rel=1e-3)


def test_percentile_clips_outliers():
    x = np.concatenate([RNG.uniform(-1, 1, 100_000), [50.0, -40.0]])
    lo, hi = estimate_range(observe(x), "percentile", percentile=99.9)
    assert 0.95 < hi < 1.2 and -1.2 < lo < -0.95


@pytest.mark.parametrize("method, tail_cut", [("entropy", 0.5), ("mse", 1.0)])
def test_clipping_methods_cut_a_long_tail_and_beat_minmax(method, tail_cut):
    # MSE weighs each outlier's squared clipping error, so it cuts less of this tail than KL does.
    x = np.concatenate([RNG.standard_normal(200_000), RNG.standard_normal(20) * 30])
    obs = observe(x)
    lo, hi = estimate_range(obs, method)
    assert 2.0 < hi < tail_cut * obs.amax  # keeps the bulk of a unit Gaussian, clips the tail

    def mse(lo, hi):
        q = activation_qparams(lo, hi)
        return float(np.mean((q.dequantize(q.quantize(x.astype(np.float32))) - x) ** 2))

    assert mse(lo, hi) < mse(*estimate_range(obs, "minmax"))


def test_relu_output_range_stays_non_negative():
    x = np.maximum(RNG.standard_normal(50_000), 0)
    for method in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = estimate_range(observe(x), method)
        assert lo == 0.0 and hi > 1.0


def test_unknown_method_and_unobserved_tensor():
    with pytest.raises(ValueError, match="unknown calibration method 'kl'"):
        estimate_range(observe(np.ones(3)), "kl")
    with pytest.raises(ValueError, match="no calibration data"):
        estimate_range(HistogramObserver(), "minmax")


def test_symmetric_and_asymmetric_activation_params():
    sym = activation_qparams(-2.0, 1.0)
    assert sym.dtype == "int8" and sym.zero_point == 0 and sym.scale == pytest.approx(2 / 127)
    asym = activation_qparams(0.5, 6.0, symmetric=False)  # widened to contain 0
    assert asym.dtype == "uint8" and asym.zero_point == 0 and asym.scale == pytest.approx(6 / 255)
    asym = activation_qparams(-1.0, 3.0, symmetric=False)
    assert asym.zero_point == round(1 / (4 / 255))
    assert asym.dequantize(asym.quantize(np.zeros(1, np.float32)))[0] == 0.0


def test_per_channel_weights_round_trip_within_half_a_step():
    w = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None, None, None]
    q = weight_qparams(w, axis=0)
    assert q.scale.shape == (8,) and (q.zero_point == 0).all()
    wq = q.quantize(w)
    assert wq.dtype == np.int8 and wq.min() >= -127
    err = np.abs(q.dequantize(wq) - w)
    assert (err <= q.scale[:, None, None, None] / 2 + 1e-7).all()
    per_tensor = weight_qparams(w, axis=None)
    assert np.abs(per_tensor.dequantize(per_tensor.quantize(w)) - w).mean() > err.mean()


INPUTS = [TensorInfo("x", (2, 3), "float32")]


def test_npz_and_folder_are_split_into_batches(tmp_path):
    x = RNG.standard_normal((6, 3)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    batches = load_calibration(tmp_path / "calib.npz", INPUTS)
    assert len(batches) == 3 and np.array_equal(batches[1]["x"], x[2:4])
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "x.npy", x)
    assert len(load_calibration(tmp_path / "dir", INPUTS)) == 3


def test_iterable_of_dicts():
    batches = load_calibration(({"x": np.ones((2, 3), np.float64)} for _ in range(4)), INPUTS)
    assert len(batches) == 4 and batches[0]["x"].dtype == np.float32


@pytest.mark.parametrize("data, message", [
    ([], "the calibration set is empty"),
    ([{"x": np.full((2, 3), np.nan)}], "batch 0, input 'x' contains NaN or Inf"),
    ([{"x": np.ones((2, 3))}, {"x": np.array([[1, np.inf, 0]] * 2)}], "batch 1, input 'x' contains NaN or Inf"),
    ([{"x": np.ones((2, 4))}], r"batch 0, input 'x': shape \[2, 4\], expected \[2, 3\]"),
    ([{"image": np.ones((2, 3))}], r"batch 0 has inputs \['image'\]; the model's inputs are \['x'\]"),
    (np.ones((2, 3)), "batch 0 is a ndarray"),
])
def test_bad_calibration_data_is_named(data, message):
    with pytest.raises(QCompileError, match=message):
        load_calibration(data, INPUTS)


def test_bad_calibration_files(tmp_path):
    np.savez(tmp_path / "odd.npz", x=np.ones((5, 3), np.float32))
    with pytest.raises(QCompileError, match="has 5 samples, not a multiple of the model's batch size 2"):
        load_calibration(tmp_path / "odd.npz", INPUTS)
    np.savez(tmp_path / "shape.npz", x=np.ones((4, 7), np.float32))
    with pytest.raises(QCompileError, match=r"shape.npz: calibration input 'x' has shape \[4, 7\]; expected \[N, 3\]"):
        load_calibration(tmp_path / "shape.npz", INPUTS)
    with pytest.raises(QCompileError, match="no such calibration data"):
        load_calibration(tmp_path / "none.npz", INPUTS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(QCompileError, match="holds no .npy files"):
        load_calibration(tmp_path / "empty", INPUTS)


def test_observer_leaves_infinities_out_and_keeps_the_mean_batch_in_its_shape():
    from qcompile.quantize.ranges import HistogramObserver, estimate_range

    obs = HistogramObserver()
    a = np.array([[[-np.inf, 1.0], [2.0, np.nan]]], dtype=np.float32)
    b = np.array([[[3.0, -1.0], [0.5, 4.0]]], dtype=np.float32)
    obs.update(a)
    obs.update(b)
    assert (obs.min, obs.max) == (-1.0, 4.0)
    assert obs.mean_batch.shape == (1, 2, 2)
    assert obs.mean_batch[0, 1, 0] == 1.25
    for method in ("minmax", "percentile", "entropy", "mse"):
        assert 0 < estimate_range(obs, method)[1] <= 4.0
