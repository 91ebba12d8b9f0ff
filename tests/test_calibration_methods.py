"""Calibration thresholds and table formats: pure functions checked against slow references."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from torch import nn

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


def _relu_graph(path):
    """input → Conv → Relu → Flatten: the Relu and Flatten outputs are derived, the Conv output observed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("Flatten", ["relu"], ["flat"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 8, 8])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, ["n", 256]),
         helper.make_tensor_value_info("conv", TensorProto.FLOAT, ["n", 4, 8, 8])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_relu_statistics_derived_from_the_input_equal_observed_ones(tmp_path):
    import onnxruntime as ort

    from edgekit.calibration.collect import BINS, TensorStats, collect, sample_step

    _relu_graph(tmp_path / "m.onnx")
    batches = [np.random.default_rng(i).standard_normal((5, 2, 8, 8)).astype(np.float32) * (i + 1) for i in range(4)]
    collected = collect(tmp_path / "m.onnx", iter(batches))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    observed = TensorStats.empty()
    highest = 0.0
    for batch in batches:  # bin the Relu output directly, on the Conv output's range (which it inherits)
        relu, conv = session.run(["flat", "conv"], {"x": batch})
        observed.add(relu.ravel()[::sample_step(4 * 8 * 8)], float(conv.min()), float(conv.max()))
        highest = max(highest, float(relu.max()))
    derived = collected.stats["relu"]
    assert derived.lowest == 0.0 and derived.highest == pytest.approx(highest)
    assert derived.edge == observed.edge
    assert np.array_equal(derived.counts, observed.counts)
    assert np.array_equal(collected.stats["flat"].counts, derived.counts)
    assert collected.stats["conv"].signed[:BINS].sum() > 0 and derived.signed[:BINS].sum() == 0


def test_signed_histogram_folds_to_the_absolute_one_and_doubling_is_exact():
    from edgekit.calibration.collect import BINS, TensorStats

    values = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)
    stats = TensorStats.empty()
    stats.add(values, float(values.min()), float(values.max()))
    expected, _ = np.histogram(np.abs(values), bins=BINS, range=(0, stats.edge))
    # float32 binning may put a value within ~1e-4 of a bin edge on its other side: a handful of 50,000
    assert stats.counts.sum() == len(values) and np.abs(stats.counts - expected).sum() <= 25
    wider = TensorStats.empty()
    wider.add(values, float(values.min()), float(values.max()))
    wider._grow(stats.edge * 3)
    assert wider.edge == 4 * stats.edge
    assert np.array_equal(wider.counts[:BINS // 4], stats.counts.reshape(-1, 4).sum(axis=1))


class _LayerNormGelu(nn.Module):
    """Exports constants as nodes (the GELU's 1/sqrt(2), the LayerNorm's epsilon)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm(8), nn.Linear(8, 4)

    def forward(self, x):
        y = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(nn.functional.gelu(y)).mean((1, 2))


class _SharedConv(nn.Module):
    """One convolution applied twice: two Conv nodes read the same weight."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.shared, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.shared(torch.relu(self.shared(torch.relu(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("net", [_LayerNormGelu, _SharedConv])
def test_both_int8_files_are_written_for_graphs_users_write(tmp_path, net):
    """ONNX Runtime's quantiser and our Q/DQ writer must not stop at exported constants or shared weights."""
    import onnx
    import onnxruntime as ort

    from edgekit.calibration.collect import collect, make_table
    from edgekit.calibration.cpu import write_cpu_int8
    from edgekit.calibration.trt_qdq import check_trt_qdq, write_trt_qdq

    fp32 = tmp_path / "m.onnx"
    torch.onnx.export(net().eval(), torch.randn(2, 3, 8, 8), str(fp32), input_names=["x"], opset_version=17,
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    batches = [np.random.default_rng(i).standard_normal((4, 3, 8, 8)).astype(np.float32) for i in range(2)]
    table = make_table(collect(fp32, iter(batches)), "percentile")
    write_cpu_int8(fp32, table, tmp_path / "cpu.onnx")
    write_trt_qdq(fp32, table, tmp_path / "qdq.onnx")
    assert check_trt_qdq(onnx.load(str(tmp_path / "qdq.onnx"))) == []
    reference = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"x": batches[0]})[0]
    for name in ("cpu.onnx", "qdq.onnx"):
        model = onnx.load(str(tmp_path / name))
        assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in model.graph.node}
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"x": batches[0]})[0]
        assert outputs.shape == (4, 4) and np.abs(outputs - reference).max() < 0.1 * np.abs(reference).max() + 0.05
