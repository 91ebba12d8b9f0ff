"""Calibration thresholds and table formats: pure functions checked against slow references."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from edgekit.calibration.methods import amax_entropy, amax_mse, amax_percentile, choose_amax
from edgekit.calibration.table import CalibrationTable, TensorRange, parse_trt_cache, trt_cache


def reference_entropy(counts: np.ndarray, edge: float) -> float:
    """The per-candidate loop as NVIDIA's pytorch-quantization writes it (digitize into 128 levels)."""
    counts = counts.astype(np.float64)
    counts[0] = counts[1]
    bins, best_i, best = len(counts), len(counts), np.inf
    for i in range(128, bins + 1):
        level = np.digitize(np.arange(i), np.linspace(0, i, num=129)) - 1
        level[counts[:i] == 0] = -1
        q = np.zeros(i)
        for k in set(level.tolist()) - {-1}:
            members = level == k
            q[members] = counts[:i][members].sum() / members.sum()
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        divergence = np.inf if np.any(q[mask] == 0) else float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if divergence < best:
            best, best_i = divergence, i
    return best_i * edge / bins


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_entropy_matches_the_loop_reference(seed):
    rng = np.random.default_rng(seed)
    values = np.abs(rng.standard_normal(200_000) * (1 + seed)) ** (1 + 0.3 * seed)
    edge = values.max()
    counts = np.bincount(np.minimum((values / edge * 2048).astype(int), 2047), minlength=2048)
    if seed == 3:
        counts[1500:1900] = 0  # gaps in the tail (post-ReLU activations have them)
    assert amax_entropy(counts, edge) == pytest.approx(reference_entropy(counts, edge))


def test_entropy_ignores_the_zero_spike_after_a_relu():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(1_000_000), np.abs(rng.standard_normal(1_000_000))])
    counts = np.bincount(np.minimum((values / values.max() * 2048).astype(int), 2047), minlength=2048)
    assert amax_entropy(counts, values.max()) > 2.5  # the spike at 0 does not pull the threshold down


def test_entropy_clips_a_thin_tail_and_keeps_a_uniform_range():
    rng = np.random.default_rng(0)
    values = rng.exponential(1.0, 2_000_000)  # |x| of a Laplace activation: long, thin, gap-free tail
    counts = np.bincount(np.minimum((values / values.max() * 2048).astype(int), 2047), minlength=2048)
    assert amax_entropy(counts, values.max()) < 0.8 * values.max()
    assert amax_entropy(np.full(2048, 100), 4.0) == 4.0


def test_percentile_and_mse_on_known_distributions():
    counts = np.full(1000, 10)  # uniform on [0, 10)
    assert amax_percentile(counts, 10.0, 50.0) == pytest.approx(5.0)
    assert amax_percentile(counts, 10.0, 100.0) == pytest.approx(10.0)
    counts = np.zeros(2048, dtype=np.int64)
    counts[:1024] = 1000
    counts[2047] = 1  # one far outlier: MSE clips it
    assert amax_mse(counts, 8.0) == pytest.approx(4.0, rel=0.02)
    assert choose_amax("minmax", counts, 8.0, 7.99) == 7.99
    with pytest.raises(ValueError, match="unknown calibration method"):
        choose_amax("magic", counts, 8.0, 8.0)


def test_trt_cache_round_trips_every_scale_to_float32_precision():
    rng = np.random.default_rng(1)
    table = CalibrationTable("entropy", 512, {f"/layer{i}/Conv_output_0": TensorRange(float(a), -1.0, 1.0)
                                              for i, a in enumerate(rng.uniform(0.01, 50, 40))})
    table.ranges["input"] = TensorRange(2.5, -2.0, 2.5)
    text = trt_cache(table, "8601")
    header, scales = parse_trt_cache(text)
    assert header == "TRT-8601-EntropyCalibration2" and text.splitlines()[0] == header
    assert set(scales) == set(table.ranges)
    for name, value in table.ranges.items():
        assert scales[name] == struct.unpack(">f", struct.pack(">f", value.amax / 127.0))[0]
    assert "input: " + struct.pack(">f", 2.5 / 127).hex() in text
    assert CalibrationTable.from_json(table.to_json()).ranges == table.ranges
