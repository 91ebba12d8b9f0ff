"""The ONNX files written for TensorRT: Q/DQ rules for transposed convolutions, FP16-typed files for 11."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgekit.calibration.table import CalibrationTable, TensorRange
from edgekit.calibration.trt_qdq import check_trt_qdq, write_trt_qdq
from edgekit.host.optimize.quantize.fp16 import needs_typed_files, write_fp16, write_qdq_fp16


class Decoder(torch.nn.Module):
    """Conv → ConvTranspose (one group) → grouped ConvTranspose → pooling → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.grouped = torch.nn.ConvTranspose2d(6, 4, 3, padding=1, groups=2)
        self.head = torch.nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.up(x))
        x = self.grouped(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> tuple[Path, np.ndarray, CalibrationTable]:
    folder = tmp_path_factory.mktemp("decoder")
    torch.manual_seed(0)
    path = folder / "model.onnx"
    torch.onnx.export(Decoder().eval(), (torch.randn(2, 3, 8, 8),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}}, opset_version=17,
                      dynamo=False)
    inputs = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    return path, inputs, ranges_of(path, inputs)


def ranges_of(path: Path, inputs: np.ndarray) -> CalibrationTable:
    """Max |x| of every tensor on the inputs (min/max calibration, enough for these checks)."""
    model = onnx.load(str(path))
    names = [out for node in model.graph.node for out in node.output]
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    values = ort.InferenceSession(model.SerializeToString()).run(names, {"input": inputs})
    ranges = {"input": float(np.abs(inputs).max())}
    ranges.update({n: float(np.abs(v).max()) for n, v in zip(names, values)})
    return CalibrationTable("minmax", len(inputs), {n: TensorRange(a, -a, a) for n, a in ranges.items()})


def run(path: Path, inputs: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"input": inputs})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_transposed_conv_weights_follow_nvidias_rule(decoder, tmp_path):
    path, inputs, table = decoder
    out = tmp_path / "model.int8.qdq.onnx"
    summary = write_trt_qdq(path, table, out)
    model = onnx.load(str(out))
    assert not check_trt_qdq(model)
    nodes = {n.name: n for n in model.graph.node}
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    deconvs = [n for n in model.graph.node if n.op_type == "ConvTranspose"]
    assert len(deconvs) == 2 and all(n.name in summary["quantized"] for n in deconvs)
    one_group, grouped = (nodes[n.input[1].replace("_DequantizeLinear", "_DQ")] for n in deconvs)
    axis = {a.name: a.i for a in one_group.attribute}
    assert axis == {"axis": 1} and init[one_group.input[1]].shape == (6,)  # C_out of the one-group deconv
    assert not list(grouped.attribute) and init[grouped.input[1]].shape == ()  # grouped: per tensor
    assert cosine(run(out, inputs), run(path, inputs)) > 0.99


def test_fp16_files_for_strongly_typed_builds(decoder, tmp_path):
    path, inputs, table = decoder
    fp16 = write_fp16(path, tmp_path / "model.fp16.onnx")
    model = onnx.load(str(fp16))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    weights = [i for i in model.graph.initializer if i.name.endswith("weight")]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert cosine(run(fp16, inputs), run(path, inputs)) > 0.9999

    qdq = write_trt_qdq(path, table, tmp_path / "model.int8.qdq.onnx") and tmp_path / "model.int8.qdq.onnx"
    typed = write_qdq_fp16(qdq, tmp_path / "model.int8.qdq.fp16.onnx")
    model = onnx.load(str(typed))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 19
    init = {i.name: i for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(init[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in dq)
    assert cosine(run(typed, inputs), run(qdq, inputs)) > 0.999


def test_typed_files_only_where_a_device_needs_them():
    assert needs_typed_files("tensorrt", "fp16", "explicit", None)
    assert needs_typed_files("tensorrt", "int8", "explicit", 11)
    assert not needs_typed_files("tensorrt", "int8", "explicit", 10)
    assert not needs_typed_files("tensorrt", "fp32", "explicit", None)
    assert not needs_typed_files("onnxruntime", "int8", "explicit", None)


def test_typed_files_are_added_once_for_the_devices_that_need_them(decoder, tmp_path):
    from edgekit.host.optimize.quantize.fp16 import add_typed_files, known_trt_major

    path, _, _ = decoder
    source = tmp_path / "stage" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(path.read_bytes())
    said = []
    store = tmp_path / "typed"
    files = add_typed_files({"model.onnx": source}, "tensorrt", "fp16", "explicit", None, store, said.append)
    typed = files["model.fp16.onnx"]
    assert typed.is_file() and len(said) == 1
    stamp = typed.stat().st_mtime_ns
    assert add_typed_files({"model.onnx": source}, "tensorrt", "fp16", "explicit", 11, store)["model.fp16.onnx"] \
        == typed
    assert typed.stat().st_mtime_ns == stamp  # written once
    assert "model.fp16.onnx" not in add_typed_files({"model.onnx": source}, "tensorrt", "fp16", "explicit", 10, store)
    assert known_trt_major({"backend": "tensorrt", "backend_describe": {"version": "11.0.0.114"}}) == 11
    assert known_trt_major({"backend": "onnxruntime"}) is None and known_trt_major(None) is None


def test_push_adds_typed_files_unless_the_device_last_ran_tensorrt_before_11(decoder, tmp_path):
    from types import SimpleNamespace

    from edgekit.host.config import DeviceSection
    from edgekit.host.optimize.quantize.fp16 import typed_files_for
    from edgekit.host.records.history import History

    path, _, _ = decoder
    config = SimpleNamespace(state_dir=tmp_path / "state")
    device = DeviceSection(kind="local", backend="tensorrt", precision="fp16")
    assert list(typed_files_for(config, "orin", device, {"model.onnx": path})) == ["model.fp16.onnx"]
    History(config.state_dir / "history.db").record("orin", {"job": "j1", "status": "done", "backend": "tensorrt",
                                                             "backend_describe": {"version": "10.3.0.30"}})
    assert typed_files_for(config, "orin", device, {"model.onnx": path}) == {}
    assert typed_files_for(config, "orin", DeviceSection(kind="local", backend="tensorrt"), {"model.onnx": path}) \
        == {}


def test_push_adds_the_hosts_outputs_of_the_typed_files_tensorrt_11_builds(decoder, tmp_path):
    """Issue 23, defect 8: TensorRT 11 builds the typed file, and the device validates against the host's outputs
    of the file it built; before, reference.npz lacked them and an INT8 engine was judged against the FP32 model."""
    from types import SimpleNamespace

    from edgekit.device.contract.validate import reference_key
    from edgekit.device.jobs.measure import validate
    from edgekit.host.config import DeviceSection
    from edgekit.host.optimize.prevalidate import write_reference
    from edgekit.host.optimize.quantize.fp16 import typed_files_for

    path, inputs, table = decoder
    qdq = tmp_path / "model.int8.qdq.onnx"
    write_trt_qdq(path, table, qdq)
    reference = tmp_path / "reference.npz"
    labels = np.zeros(len(inputs), np.int64)
    write_reference(reference, inputs, labels, {"model.onnx": run(path, inputs), qdq.name: run(qdq, inputs)})
    files = {"model.onnx": path, qdq.name: qdq, "reference.npz": reference}
    config = SimpleNamespace(state_dir=tmp_path / "state")
    device = DeviceSection(kind="local", backend="tensorrt", precision="int8")
    said = []
    added = typed_files_for(config, "orin", device, files, said.append)
    assert {"model.fp16.onnx", "model.int8.qdq.fp16.onnx", "reference.npz"} <= set(added)
    with np.load(str(added["reference.npz"]), allow_pickle=False) as data:
        for name in ("model.fp16.onnx", "model.int8.qdq.fp16.onnx"):
            assert np.array_equal(data[reference_key(name)], run(added[name], inputs))
        assert np.array_equal(data["outputs"], run(path, inputs))  # what older agents read is kept
        assert np.array_equal(data[reference_key(qdq.name)], run(qdq, inputs))
    assert typed_files_for(config, "orin", device, dict(files, **added)) == {}  # a fleet's next device: nothing new

    typed = added["model.int8.qdq.fp16.onnx"]
    manifest = SimpleNamespace(input_shape=list(inputs.shape[1:]), batch_sizes=[8], precision="int8", validation={},
                               raw={"host": {"reference_runtime": "onnxruntime"}})
    engine = SimpleNamespace(run=lambda batch: run(typed, batch))
    verdict = validate(engine, added["reference.npz"], manifest, typed.name, "tensorrt", "int8")
    assert verdict["reference"] == typed.name and verdict["max_abs_error"] == 0.0 and verdict["passed"]


def test_typed_files_are_checked_against_the_fp32_model_before_upload(tmp_path):
    """The device compares its TensorRT 11 engine with the host's outputs of the typed file it built, so a typed
    file unfaithful to the FP32 model must be caught on the host: refused when it is the precision asked for,
    left out when the device would only measure it."""
    from edgekit.host.config import DeviceSection
    from edgekit.host.errors import CheckFailed
    from edgekit.host.optimize.prevalidate import write_reference
    from edgekit.host.ship.push import failing_alternatives

    rng = np.random.default_rng(0)
    fp32 = rng.standard_normal((64, 10)).astype(np.float32)
    faithful = fp32 + np.float32(1e-4) * rng.standard_normal(fp32.shape).astype(np.float32)
    scrambled = rng.permutation(fp32, axis=1)  # another answer for most samples
    reference = tmp_path / "reference.npz"
    write_reference(reference, np.zeros((64, 3, 8, 8), np.float32), fp32.argmax(1),
                    {"model.onnx": fp32, "model.fp16.onnx": faithful, "model.int8.qdq.fp16.onnx": scrambled})
    manifest = {"files": [{"name": name} for name in ("model.onnx", "model.fp16.onnx", "model.int8.qdq.fp16.onnx")],
                "target": {"validation": {}}}
    fp16 = DeviceSection(kind="local", backend="tensorrt", precision="fp16")
    assert list(failing_alternatives(reference, manifest, fp16, "orin")) == ["model.int8.qdq.fp16.onnx"]
    int8 = DeviceSection(kind="local", backend="tensorrt", precision="int8")
    with pytest.raises(CheckFailed, match="model.int8.qdq.fp16.onnx would fail validation on orin"):
        failing_alternatives(reference, manifest, int8, "orin")
