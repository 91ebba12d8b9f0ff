"""The report's baseline runs each runtime at its own defaults, and ``precision = "auto"`` picks by measurement.

Honesty checks, one per backend: the settings the baseline is built with are the runtime's defaults (what a
user who never heard of edgekit would run), read back from the runtime where it can say.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.device.backends.tensorrt.plan import TrtVersion, plan_build
from edgekit.device.contract.manifest import MODEL_FP16, MODEL_FP32, MODEL_INT8_CPU
from edgekit.device.contract.model_files import job_candidates, model_file
from edgekit.device.contract.runtimes import baseline_precision
from edgekit.device.jobs.auto import Candidate, choose, precision_advice, precision_label, slower

VNNI = {"flags_read": True, "u8s8_saturates": False}


def tiny_onnx(path):
    """One 3×3 convolution and a global pool: enough for a runtime to compile and report its precision."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


# -- OpenVINO -------------------------------------------------------------------------------------------
def test_openvino_baseline_is_compiled_with_openvinos_default_precision(tmp_path):
    pytest.importorskip("openvino")
    from edgekit.device.backends.openvino import OpenVinoBackend, compile_config

    precision = baseline_precision("openvino")
    assert "INFERENCE_PRECISION_HINT" not in compile_config("CPU", 0, None, precision)  # nothing forced
    assert compile_config("CPU", 0, None, "fp32")["INFERENCE_PRECISION_HINT"] == "f32"  # strict: pinned
    backend = OpenVinoBackend()
    default = backend.core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()  # the runtime's own
    model = tiny_onnx(tmp_path / "model.onnx")
    executed = {}
    for each in (precision, "fp32"):
        folder = tmp_path / each
        folder.mkdir()
        meta = backend.build(model, folder, {"precision": each, "batch_sizes": [2]}, lambda message: None)
        engine = backend.load(folder, meta)
        engine.run(np.zeros((2, 3, 8, 8), np.float32))
        executed[each] = engine.executed_precision()
        assert meta["executed_precision"] == executed[each]  # read back from the compiled model at build
        engine.close()
    assert executed[precision] == default and executed["fp32"] == "f32"


# -- ONNX Runtime ---------------------------------------------------------------------------------------
def test_onnxruntime_baseline_is_the_fp32_file_with_the_sessions_defaults():
    ort = pytest.importorskip("onnxruntime")
    from edgekit.device.backends.onnxruntime import OnnxRuntimeBackend

    assert baseline_precision("onnxruntime") == "fp32"
    assert model_file("onnxruntime", baseline_precision("onnxruntime")) == MODEL_FP32  # no conversion of any kind
    ours = OnnxRuntimeBackend()._options({"threads": 0})
    assert ours.graph_optimization_level == ort.SessionOptions().graph_optimization_level  # ORT's default level
    assert ours.intra_op_num_threads == ort.SessionOptions().intra_op_num_threads == 0  # ORT picks the threads


# -- TensorRT (pure: the plan the backend turns into builder calls) ---------------------------------------
@pytest.mark.parametrize("version, files, model, flags", [
    ("10.3.0", [MODEL_FP32], MODEL_FP32, ("FP16",)),  # trtexec --fp16: FP16 flag on the float model
    ("8.5.2", [MODEL_FP32], MODEL_FP32, ("FP16",)),
    ("11.0.0", [MODEL_FP32, MODEL_FP16], MODEL_FP16, ()),  # strongly typed: the FP16-typed file, no flags
])
def test_tensorrt_baseline_is_an_fp16_build_with_tensorrts_defaults(version, files, model, flags):
    precision = baseline_precision("tensorrt")
    assert precision == "fp16"
    plan = plan_build({"precision": precision, "batch_sizes": [1, 32], "input_shape": [3, 32, 32]},
                      TrtVersion.parse(version), 0, files)
    assert plan.model_file == model and plan.flags == flags  # nothing else: no INT8
    assert plan.cleared_flags == ()  # TF32 stays on, as with trtexec --fp16
    assert plan.optimization_level is None and plan.dla_core is None  # the builder's defaults
    strict = plan_build({"precision": "fp32", "batch_sizes": [1], "input_shape": [3, 32, 32]},
                        TrtVersion.parse(version), 0, files)
    assert strict.flags == () and strict.model_file == MODEL_FP32
    assert strict.cleared_flags == ("TF32",)  # strict FP32: TF32 (on by default since 7.1) cleared


# -- precision = "auto": candidates, choice and advice --------------------------------------------------
def test_auto_precision_builds_every_precision_a_runtime_has_from_the_files_shipped():
    shipped = [MODEL_FP32, MODEL_INT8_CPU]
    assert job_candidates(["openvino", "onnxruntime"], "auto", shipped, cpu=VNNI) == [
        ("openvino", "int8"), ("openvino", "fp16"), ("openvino", "fp32"), ("onnxruntime", "int8"),
        ("onnxruntime", "fp32")]
    assert job_candidates(["onnxruntime"], "auto", [MODEL_FP32], cpu=VNNI) == [("onnxruntime", "fp32")]  # no INT8
    # an explicit precision first; the others only where the bundle carries their file
    assert job_candidates(["openvino"], "int8", [MODEL_INT8_CPU], cpu=VNNI) == [("openvino", "int8")]
    assert job_candidates(["openvino"], "int8", shipped, cpu=VNNI) == [
        ("openvino", "int8"), ("openvino", "fp16"), ("openvino", "fp32")]
    assert job_candidates(["tensorrt"], "auto", ["model.int8.qdq.onnx", MODEL_FP32]) == [
        ("tensorrt", "int8"), ("tensorrt", "fp16"), ("tensorrt", "fp32")]


def candidate(backend, precision, medians, b1, executed="", requested=True, passed=True):
    return Candidate(backend, "m", passed, round_medians_ms=medians, other_batches={1: b1}, precision=precision,
                     executed=executed, requested=requested)


def test_auto_ships_the_fastest_valid_candidate_and_names_what_it_ran():
    int8 = candidate("openvino", "int8", [1.6, 1.5], [0.26, 0.25])
    bf16 = candidate("openvino", "fp16", [1.4, 1.45], [0.22, 0.23], executed="bf16")
    wrong = candidate("onnxruntime", "int8", [0.5], [0.1], passed=False)  # fastest, but failed validation
    choice = choose([int8, bf16, wrong], 32)
    assert choice.winner == "openvino fp16" and choice.runner_up == "openvino int8"
    assert choice.message.startswith("auto chose openvino bf16: ") and "faster than openvino int8" in choice.message
    assert precision_label("fp16", "bf16") == "bf16" and precision_label("fp16", "f32") == "fp32"


def test_an_explicit_precision_ships_it_and_warns_when_another_measured_faster():
    int8 = candidate("openvino", "int8", [2.0, 2.1], [0.30])
    bf16 = candidate("openvino", "fp16", [1.0, 1.1], [0.15], executed="bf16", requested=False)
    choice = choose([int8, bf16], 32)
    assert choice.winner == "openvino int8"  # the precision asked for, although slower
    advice = precision_advice([int8, bf16], choice.winner, 32, primary=1)
    assert advice.startswith("precision int8 was asked for, but openvino bf16 measured 2.00× faster at batch 1")
    assert 'precision = "auto" would ship it' in advice
    close = candidate("openvino", "fp32", [1.98], [0.30], requested=False)  # within noise: no warning
    assert precision_advice([int8, close], "openvino int8", 32) is None
    failed = candidate("openvino", "fp16", [0.5], [0.1], requested=False, passed=False)  # never advised
    assert precision_advice([int8, failed], "openvino int8", 32) is None


def test_auto_prefers_the_candidate_slower_at_no_batch_size():
    """bf16 is fastest at batch 1 by a hair (within noise) and 1.3× faster at batch 32: it dominates, although
    INT8 has the lower batch-1 median; a geometric mean would not have said why."""
    int8 = candidate("openvino", "int8", [13.0, 13.2, 12.9, 13.1, 13.0], [1.00, 1.01, 0.99, 1.00, 1.02])
    bf16 = candidate("openvino", "fp16", [10.0, 10.1, 9.9, 10.2, 10.0], [1.02, 0.99, 1.03, 1.01, 1.02],
                     executed="bf16")
    choice = choose([int8, bf16], 32, primary=1)
    assert choice.winner == "openvino fp16" and not choice.crossed and choice.primary == 1
    assert "slower than none at any batch size beyond noise" in choice.message
    assert "within noise" in choice.message  # at the primary batch size, INT8 is as fast


def test_auto_treats_a_gap_within_the_rounds_spread_as_a_tie():
    """8 % apart by the median, but the rounds overlap (one round reverses): not slower beyond noise, so no
    crossing; the primary batch size picks among the ties."""
    a = candidate("onnxruntime", "int8", [10.0, 10.0, 10.0, 10.0, 10.0], [1.0, 1.0, 1.0, 1.0, 1.0])
    b = candidate("openvino", "int8", [10.8, 10.9, 9.5, 10.8, 11.0], [0.90, 0.92, 0.91, 0.93, 0.90])
    assert slower(b.round_medians_ms, a.round_medians_ms) is False
    assert slower(a.other_batches[1], b.other_batches[1]) is True  # steady 9 % in every round
    choice = choose([a, b], 32, primary=1)
    assert choice.winner == "openvino int8" and not choice.crossed  # fastest at batch 1, tied at 32
    assert not slower([10.4] * 5, [10.0] * 5)  # steady but under NOISE_PERCENT


def test_auto_at_a_crossing_decides_by_the_primary_batch_size_and_says_what_the_other_would_win():
    int8 = candidate("openvino", "int8", [3.0, 3.1, 3.0], [0.40, 0.41, 0.40])  # faster at batch 32
    ort = candidate("onnxruntime", "int8", [4.5, 4.4, 4.6], [0.20, 0.21, 0.20])  # faster at batch 1
    choice = choose([int8, ort], 32, primary=1)
    assert choice.winner == "onnxruntime int8" and choice.runner_up == "openvino int8" and choice.crossed == {
        32: "openvino int8"}
    assert "openvino int8 would have won at batch 32 by 1.50× (3.000 vs 4.500 ms)" in choice.message
    assert choose([int8, ort], 32, primary=32).winner == "openvino int8"
    advice_ort = candidate("onnxruntime", "int8", [4.5, 4.4, 4.6], [0.20, 0.21, 0.20], requested=False)
    assert precision_advice([int8, advice_ort], "openvino int8", 32, primary=32) is None  # auto ships int8 too
    assert "measured 2.00× faster at batch 1" in precision_advice([int8, advice_ort], "openvino int8", 32, primary=1)


# -- TensorRT's baseline reads the unpruned files ------------------------------------------------------
class RecordingTrt:
    """Answers like the TensorRT backend where the baseline is concerned: its job options carry every ONNX file
    by name, and its build takes the file its plan picks (plan_build) from them."""

    name = "tensorrt"

    def __init__(self, version: str) -> None:
        self.version = TrtVersion.parse(version)
        self.built: dict = {}

    def identity(self) -> dict:
        return {"backend": self.name, "version": str(self.version)}

    def job_options(self, agent_root, engines, files) -> dict:
        return {"model_paths": {name: str(path) for name, path in files.items() if name.endswith(".onnx")}}

    def build(self, model, engine_dir, options, progress) -> dict:
        plan = plan_build(options, self.version, 0, sorted(options["model_paths"]))
        self.built = {"file": options["model_paths"][plan.model_file], "flags": plan.flags}
        return {"file": "engine.plan"}

    def load(self, folder, meta):
        return "engine"


@pytest.mark.parametrize("version, typed, flags", [("10.3.0", False, ("FP16",)), ("11.0.0", True, ())])
def test_tensorrt_builds_the_unpruned_model_at_fp16_never_the_pruned_one(tmp_path, version, typed, flags):
    from edgekit.device.agent.spool import Spool
    from edgekit.device.contract.manifest import MODEL_BASELINE, MODEL_BASELINE_FP16, parse_manifest
    from edgekit.device.jobs.baseline import build_baseline
    from edgekit.device.jobs.context import Job

    names = [MODEL_FP32, MODEL_BASELINE] + ([MODEL_BASELINE_FP16] if typed else [])
    files = {name: tmp_path / name for name in names}
    manifest = parse_manifest({
        "schema_version": 1, "model": "m", "input": {"name": "input", "shape": [3, 8, 8], "batch_sizes": [1, 4]},
        "target": {"backend": "tensorrt", "precision": "auto"},
        "files": [{"name": name, "sha256": "0" * 64, "size": 1} for name in names]})
    spool = Spool(tmp_path / "root")
    spool.engines.mkdir(parents=True)
    spool.job_dir("j").mkdir(parents=True)
    backend = RecordingTrt(version)
    baseline = build_baseline(Job(spool, "j"), manifest, files, backend, baseline_precision("tensorrt"))
    expected = files[MODEL_BASELINE_FP16 if typed else MODEL_BASELINE]
    assert backend.built == {"file": str(expected), "flags": flags}
    assert baseline.info["precision"] == "fp16" and baseline.info["backend"] == "tensorrt"


def test_fp16_under_backend_auto_runs_where_a_runtime_has_it_and_is_refused_where_none_does():
    from edgekit.device.contract.model_files import ModelChoiceError, needed_files

    assert job_candidates(["openvino", "onnxruntime"], "fp16", [MODEL_FP32, MODEL_INT8_CPU], cpu=VNNI) == [
        ("openvino", "fp16"), ("openvino", "int8"), ("openvino", "fp32")]
    assert needed_files(["openvino", "onnxruntime"], "fp16", cpu=VNNI) == [MODEL_FP32]
    with pytest.raises(ModelChoiceError, match="fp16 needs"):
        job_candidates(["onnxruntime"], "fp16", [MODEL_FP32])
    with pytest.raises(ModelChoiceError, match="fp16 needs"):
        needed_files(["onnxruntime"], "fp16")
