"""From an |x| histogram to a clipping threshold (amax): the four calibration methods, all pure numpy.

The histogram has ``len(counts)`` equal bins over [0, edge]. Thresholds are bin edges, as in
TensorRT's entropy calibrator (2048 bins, 128 quantisation levels, search from bin 128 up).
"""

from __future__ import annotations

import numpy as np

METHODS = ("entropy", "percentile", "minmax", "mse")
LEVELS = 128  # int8 magnitudes 0..127


def amax_minmax(counts: np.ndarray, edge: float, absmax: float) -> float:
    return float(absmax)


def amax_percentile(counts: np.ndarray, edge: float, percentile: float = 99.99) -> float:
    """Smallest bin edge with ``percentile``% of |x| at or below it."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cumulative = np.cumsum(counts) / total
    index = int(np.searchsorted(cumulative, percentile / 100.0))
    return float(min(index + 1, len(counts)) * edge / len(counts))


def amax_mse(counts: np.ndarray, edge: float) -> float:
    """Threshold minimising the expected squared error: rounding inside, clipping outside.

    Vectorised over every candidate edge: with tail sums S0, S1, S2 of counts, counts·c and counts·c²,
    the clipping error at threshold t is S2 - 2tS1 + t²S0; rounding adds (t/127)²/12 per kept value.
    """
    bins = len(counts)
    width = edge / bins
    centers = (np.arange(bins) + 0.5) * width
    counts = counts.astype(np.float64)
    thresholds = np.arange(1, bins + 1) * width
    kept = np.cumsum(counts)
    tail0 = counts.sum() - kept
    tail1 = (counts * centers).sum() - np.cumsum(counts * centers)
    tail2 = (counts * centers ** 2).sum() - np.cumsum(counts * centers ** 2)
    clip = tail2 - 2 * thresholds * tail1 + thresholds ** 2 * tail0
    rounding = kept * (thresholds / (LEVELS - 1)) ** 2 / 12.0
    error = clip + rounding
    start = min(LEVELS, bins) - 1
    return float(thresholds[start + int(np.argmin(error[start:]))])


def _plogp(values: np.ndarray, total: float) -> np.ndarray:
    share = values / total
    return np.where(values > 0, share * np.log(np.where(values > 0, share, 1.0)), 0.0)


def amax_entropy(counts: np.ndarray, edge: float) -> float:
    """TensorRT's KL-divergence calibration (Migacz, GTC 2017) on the |x| histogram.

    As NVIDIA's pytorch-quantization implements it for TensorRT: for each candidate i (128..bins),
    P = the first i bins with every outlier added to bin i-1; Q = those bins grouped into 128 levels at
    ``linspace(0, i, 129)`` boundaries, each level's count spread evenly over its non-empty bins;
    the threshold is the edge of bin i with the smallest KL(P || Q) (infinite where Q has no mass but P
    has, so an empty bin i-1 cannot take outliers).

    KL(P||Q) = H(P) - sum P log q + log(sum q); every term is a prefix-sum difference, so all candidates
    are scored together (the per-candidate loop is kept in the tests as the reference).

    Bin 0 takes bin 1's count first, as pytorch-quantization does: after a ReLU half the values are
    exactly 0, and that spike would otherwise dominate the divergence and pull the threshold far too low.
    """
    c = counts.astype(np.float64)
    if len(c) > 1:
        c[0] = c[1]
    bins, total = len(c), float(c.sum())
    if total == 0 or bins <= LEVELS:
        return float(edge)
    i = np.arange(LEVELS, bins + 1)
    csum = np.concatenate([[0.0], np.cumsum(c)])
    filled = np.concatenate([[0], np.cumsum(c != 0)])
    suffix = total - csum
    plogp = np.concatenate([[0.0], np.cumsum(_plogp(c, total))])
    entropy = plogp[i - 1] + _plogp(c[i - 1] + suffix[i], total)
    # bin j < i belongs to level k when k*i/128 <= j < (k+1)*i/128: boundaries are ceil(k*i/128)
    bounds = -((-np.arange(LEVELS + 1)[None, :] * i[:, None]) // LEVELS)
    level = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
    nonempty = filled[bounds[:, 1:]] - filled[bounds[:, :-1]]
    density = np.where(level > 0, level / np.maximum(nonempty, 1), 1.0)
    cross = np.sum(np.where(level > 0, level * np.log(density), 0.0), axis=1) / total
    cross += suffix[i] / total * np.log(density[:, -1])
    kept = csum[i]
    divergence = entropy - cross + np.log(np.maximum(kept, 1e-300))
    divergence[((c[i - 1] == 0) & (suffix[i] > 0)) | (kept == 0)] = np.inf
    return float(i[int(np.argmin(divergence))] * edge / bins)


def choose_amax(method: str, counts: np.ndarray, edge: float, absmax: float, percentile: float = 99.99) -> float:
    if method == "minmax":
        return amax_minmax(counts, edge, absmax)
    if method == "percentile":
        return amax_percentile(counts, edge, percentile)
    if method == "mse":
        return amax_mse(counts, edge)
    if method == "entropy":
        return amax_entropy(counts, edge)
    raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
