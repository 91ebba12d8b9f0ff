"""INT8 artefacts on a real trained model and real digits: structure, placement, accuracy, mixed precision."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgekit.calibration.table import parse_trt_cache
from edgekit.calibration.trt_qdq import check_trt_qdq
from edgekit.device.contract.manifest import (
    CALIBRATION_CACHE,
    CALIBRATION_JSON,
    MODEL_INT8_CPU,
    MODEL_INT8_CPU_AVX2,
    MODEL_INT8_QDQ,
)
from edgekit.device.contract.model_files import model_file
from edgekit.device.contract.validate import tolerances
from edgekit.device.cpu import describe_cpu
from edgekit.host.config import load_config
from edgekit.host.optimize import optimize
from edgekit.host.optimize.prevalidate import REFERENCE_RUNTIME

from .conftest import run_cli


@pytest.fixture(scope="module")
def optimized(trained_project, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    shutil.copytree(trained_project, root / "p", ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = root / "p" / "deploy.toml"
    # every layer in INT8 (no mixed-precision fallback), so the structure of a full INT8 model is checked; a
    # loose rule so every INT8 file ships (the 7-bit one is dropped when it fails the rule: see below)
    config.write_text(config.read_text() + "\n[quantize]\nmax_accuracy_drop = 1.0\n[validation]\nmin_cosine = 0.9\n")
    return optimize(load_config(config), say=lambda m: None)


def test_a_7_bit_file_that_would_fail_validation_is_not_shipped(trained_project, tmp_path):
    """Without VNNI a device gets the 7-bit-weight file; when that file misses the device's rule against FP32
    it is left out (every push to such a device would be refused) and such CPUs get the U8S8 file."""
    from edgekit.device.cpu import cpu_flags, summarize_isa
    from edgekit.host.config import DeviceSection
    from edgekit.host.ship.bundle import files_for_device

    shutil.copytree(trained_project, tmp_path / "p", ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = tmp_path / "p" / "deploy.toml"
    config.write_text(config.read_text() + "\n[quantize]\nmax_accuracy_drop = 1.0\nmixed_precision = false\n"
                      "[validation]\nmin_cosine = 0.9999999\n")
    said: list[str] = []
    optimized = optimize(load_config(config), say=said.append)
    assert MODEL_INT8_CPU_AVX2 not in optimized.files and MODEL_INT8_CPU in optimized.files
    assert any(m.startswith(f"warning: {MODEL_INT8_CPU_AVX2} (7-bit weights") and "not shipped" in m for m in said)
    haswell = summarize_isa("x86_64", cpu_flags("flags\t\t: fpu sse4_2 avx avx2 fma\n"))
    status = {"backends": {"onnxruntime": {"available": True}}, "cpu": haswell}
    shipped = files_for_device(load_config(config), DeviceSection(kind="local", precision="int8"),
                               dict(optimized.files), status)
    assert MODEL_INT8_CPU in shipped and MODEL_INT8_CPU_AVX2 not in shipped


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_trt_model_follows_tensorrt_qdq_rules(optimized):
    model = onnx.load(str(optimized.files[MODEL_INT8_QDQ]))
    assert check_trt_qdq(model) == []
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    made_by = producers(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv in convs:
        weight_dq = made_by[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        axis = next(a.i for a in weight_dq.attribute if a.name == "axis")
        scales = init[weight_dq.input[1]]
        assert axis == 0 and scales.shape == (init[made_by[weight_dq.input[0]].input[0]].shape[0],)
        if len(conv.input) > 2:
            assert conv.input[2] in init and init[conv.input[2]].dtype == np.float32  # float bias
        activation_dq = made_by[conv.input[0]]
        assert init[activation_dq.input[1]].shape == ()  # per-tensor activation scale
    zero_points = [init[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_residual_adds_keep_the_conv_input_unquantised(optimized):
    model = onnx.load(str(optimized.files[MODEL_INT8_QDQ]))
    made_by = producers(model)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 9  # ResNet-20: nine residual blocks
    for add in adds:
        kinds = sorted(made_by[t].op_type for t in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], f"{add.name}: inputs from {kinds}"


def test_cpu_model_has_uint8_activations_and_int8_weights(optimized):
    model = onnx.load(str(optimized.files[MODEL_INT8_CPU]))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and all(init[n.input[2]].dtype == np.uint8 for n in quantize)
    weights = [init[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init
               and init[n.input[0]].ndim == 4]
    assert weights and all(w.dtype == np.int8 for w in weights)


def test_calibration_files_agree_with_each_other(optimized):
    table = json.loads(optimized.files[CALIBRATION_JSON].read_text())
    header, scales = parse_trt_cache(optimized.files[CALIBRATION_CACHE].read_text())
    assert table["method"] == "percentile" and table["images"] == 512 and table["percentile"] == 99.99
    assert header.endswith("-EntropyCalibration2")
    assert "input" in scales
    for name, scale in scales.items():
        assert scale == pytest.approx(table["tensors"][name]["amax"] / 127, rel=1e-6)


def test_int8_accuracy_is_measured_for_every_stage(optimized):
    accuracy = optimized.host["accuracy_by_file"]
    assert set(accuracy) == {"model.baseline.onnx", "model.onnx", MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ}
    assert abs(accuracy[MODEL_INT8_CPU_AVX2] - accuracy["model.onnx"]) <= 0.02
    assert abs(accuracy[MODEL_INT8_CPU] - accuracy["model.onnx"]) <= 0.02
    assert [s["stage"] for s in optimized.stages][-3:] == [
        "ONNX INT8 CPU (U8S8)", "ONNX INT8 CPU, 7-bit weights (no VNNI)", "ONNX INT8 Q/DQ for TensorRT"]


def test_mixed_precision_names_the_layers_it_keeps_in_float(trained_project, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(trained_project, root, ignore=shutil.ignore_patterns("home", ".edgekit"))
    config = root / "deploy.toml"
    # Calibration on images at a tenth of their brightness: ranges far too narrow, so INT8 loses accuracy.
    from edgekit.host.train.data import load_cifar

    np.save(root / "dim.npy", load_cifar(root / "data").train.images[:64] // 10)
    config.write_text(config.read_text() + '\n[quantize]\nsource = "dim.npy"\nmax_accuracy_drop = 0.0\n')
    result = optimize(load_config(config), say=lambda m: None)
    calibration = result.host["calibration"]
    assert calibration["sensitivity"] and calibration["fp_layers"]
    assert calibration["fp_layers"][0] == calibration["sensitivity"][0]["node"]
    model = onnx.load(str(result.files[MODEL_INT8_QDQ]))
    kept = {n.name for n in model.graph.node} & set(calibration["fp_layers"])
    assert check_trt_qdq(model, exclude=kept) == []
    made_by = producers(model)
    for node in model.graph.node:
        if node.name in kept:
            assert made_by.get(node.input[1]) is None  # weights stay float, no Q/DQ


@pytest.mark.slow
def test_push_local_int8_passes_validation(project):
    config = project / "deploy.toml"
    config.write_text(config.read_text() + '\n[devices.local]\nkind = "local"\nprecision = "int8"\n'
                      f'root = "{project.parent / "home" / "local-device"}"\n')
    result = run_cli("push", "local", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["report"]
    # model_files gives the U8S8 file where it cannot saturate (VNNI, ARM), its 7-bit-weight form elsewhere
    expected = model_file(report["backend"], "int8", cpu=describe_cpu())
    assert report["precision"] == "int8" and report["model_file"] == expected
    # `auto` picks the faster runtime on this machine; in the host's own runtime the tolerances are near-exact
    same_runtime = report["backend"] == REFERENCE_RUNTIME
    assert report["validation"]["passed"]
    assert report["validation"]["tolerances"] == tolerances("int8", {}, same_runtime=same_runtime)


def test_a_model_with_constant_outputs_is_refused_for_what_it_is(tmp_path):
    """A SqueezeNet trained at too high a rate ends with its last ReLU dead: all-zero logits, so its INT8 file's
    cosine against it is 0. The refusal named INT8 and advised calibrating better; it now names the model."""
    from edgekit.device.contract.manifest import MODEL_FP32
    from edgekit.host.errors import CheckFailed
    from edgekit.host.optimize.prevalidate import check_before_upload, write_reference

    inputs, labels = np.zeros((8, 3, 4, 4), np.float32), np.arange(8) % 2
    write_reference(tmp_path / "ref.npz", inputs, labels, {MODEL_FP32: np.zeros((8, 10), np.float32),
                                                           "model.int8.cpu.onnx": np.zeros((8, 10), np.float32)})
    with pytest.raises(CheckFailed) as failed:
        check_before_upload(tmp_path / "ref.npz", "model.int8.cpu.onnx", "int8", {}, "local")
    assert "outputs are all zero for every one of the 8 reference images" in str(failed.value)
    assert "train.lr" in str(failed.value) and "quantize" not in str(failed.value)
    varied = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    write_reference(tmp_path / "ref.npz", inputs, labels, {MODEL_FP32: varied, "model.int8.cpu.onnx": -varied})
    with pytest.raises(CheckFailed, match="quantize.images"):  # a real INT8 failure keeps its advice
        check_before_upload(tmp_path / "ref.npz", "model.int8.cpu.onnx", "int8", {}, "local")
