"""Quantisation-aware training: fake-quantise the pruned, BN-folded model exactly as the TensorRT Q/DQ
model will run, start from our calibration ranges, learn the ranges and the weights with distillation
from the FP32 model, then write every INT8 artefact from the learned ranges with the PTQ writers.

Why our own fake quantisers rather than a library's:
- torch.ao (``prepare_qat_fx``) places observers by its own rules (every input of an Add, asymmetric
  uint8 activations) and exports that placement; NVIDIA's pytorch-quantization is deprecated and
  Model Optimizer (``nvidia-modelopt``) swaps torch modules for its own and exports its own Q/DQ layout.
  Either way the INT8 model would follow a second set of placement rules, different from PTQ's.
- Here the placement is *read from* the Q/DQ model our PTQ writer produced: a quantiser sits exactly on
  the tensors that model quantises (each weighted layer's input, the residual input of each fused Add),
  weights are fake-quantised per output channel with the writer's own rule (max |w| / 127). After
  training, the float model is exported again, the learned amax values go into the calibration table
  under the same ONNX names, and ``write_trt_qdq``/``write_cpu_int8``/the table writer produce the three
  INT8 artefacts. The placement, zero-points and scales therefore cannot drift from PTQ's, and the
  Q/DQ model's scales equal the learned ranges (checked after every export).

Ranges are learned as log(amax) with the straight-through estimator for rounding — LSQ's gradient
(Esser et al. 2020) in the log domain, as in TQT (Jain et al. 2020), with Adam. Why: a per-tensor
threshold 10× too small must grow 10× within a few epochs; a log-domain step is scale-free, so one
learning rate suits every tensor whatever its magnitude, and LSQ's gradient (rounding error inside the
range, the clip level outside) trades clipping against resolution from the task loss. Plain STE with
fixed ranges (or min/max observers) would keep a bad calibration as it is.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from ....calibration.table import CalibrationTable, TensorRange
from ....calibration.trt_qdq import write_trt_qdq
from ....device.contract.manifest import CALIBRATION_JSON, MODEL_INT8_QDQ
from ...config import Config
from ...outputs import OutputKey, select
from ...train import distributed
from ...train.accelerator import device_of
from ...train.data import Dataset, batches, normalize
from ..export.onnx_export import export_onnx, onnx_top1
from .ptq import (
    QAT_FLOAT,
    Candidate,
    QuantizeResult,
    accuracy_of,
    calibrate,
    calibration_images,
    choose,
    device_rule,
    finish,
    fresh,
    mixed_precision_fallback,
    training_sample,
    write_all,
)

Say = Callable[[str], None]
QMIN, QMAX = -128, 127  # int8 as QuantizeLinear saturates; scale = amax / 127 as the writers use
LEVELS = 127.0
DISTILL_TEMPERATURE, DISTILL_ALPHA = 4.0, 0.7
MATCH_IMAGES = 8


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even (as ONNX QuantizeLinear) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Q→DQ in float: clamp(round(x/scale)) * scale; gradients reach x (STE) and scale (LSQ)."""
    return torch.clamp(round_ste(x / scale), QMIN, QMAX) * scale


class ActivationQuantizer(nn.Module):
    """Per-tensor symmetric fake quantiser with a learned log(amax); ``onnx_names`` are the tensors it stands for."""

    def __init__(self, amax: float, onnx_names: list[str]) -> None:
        super().__init__()
        self.log_amax = nn.Parameter(torch.tensor(math.log(max(amax, 1e-8)), dtype=torch.float32))
        self.onnx_names = onnx_names
        self.enabled = True

    @property
    def amax(self) -> float:
        """The threshold as float32, the precision the writers store it in."""
        return float(np.float32(math.exp(float(self.log_amax.detach()))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return fake_quantize(x, torch.exp(self.log_amax) / LEVELS)


class WeightQuantizer(nn.Module):
    """Parametrisation: per-output-channel symmetric fake quantisation with the Q/DQ writer's scale
    (max |w| / 127 on ``axis``), so the exported float weights quantise to exactly what was trained."""

    def __init__(self, axis: int | None) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        reduce = [d for d in range(weight.dim()) if d != self.axis]  # axis None: one scale for the tensor
        amax = weight.detach().abs().amax(dim=reduce, keepdim=True)
        scale = torch.where(amax > 0, amax / LEVELS, torch.ones_like(amax))
        return fake_quantize(weight, scale)


def weight_axis(module: nn.Module) -> int | None:
    """Output-channel axis of the torch weight, the axis ``trt_qdq.weight_axis`` picks in the exported graph
    (a grouped ConvTranspose is quantised per tensor there: None)."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return 1 if module.groups == 1 else None
    return 0


def weighted_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


# -- where the Q/DQ model quantises, and which torch value that is ---------------------------------------
def quantised_activations(qdq_model: Path) -> dict[str, float]:
    """Activation tensor → amax of every activation QuantizeLinear in a written Q/DQ model."""
    from onnx import numpy_helper

    model = onnx.load(str(qdq_model))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(init[n.input[1]]) * LEVELS for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in init}


def onnx_values(path: Path, names: list[str], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """The named intermediate tensors of an ONNX model on ``inputs`` (exposed as extra graph outputs)."""
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in outputs)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(names, {session.get_inputs()[0].name: inputs})
    return dict(zip(names, values))


def torch_values(model: fx.GraphModule, inputs: torch.Tensor) -> dict[fx.Node, np.ndarray]:
    """Every float-tensor value computed by the fx graph, node by node."""
    values: dict[fx.Node, np.ndarray] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node):
            result = super().run_node(node)
            if isinstance(result, torch.Tensor) and result.is_floating_point():
                values[node] = result.detach().numpy().copy()
            return result

    with torch.no_grad():
        Recorder(model).run(inputs)
    return values


def same_value(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-3, atol=1e-4 * (float(np.abs(b).max()) + 1e-6)))


def locate(model: fx.GraphModule, onnx_path: Path, names: list[str], inputs: np.ndarray) -> dict[str, fx.Node]:
    """ONNX tensor name → the fx node computing the same values on real images.

    Names are not comparable across the exporter (it renames and folds), values are: the earliest node
    in graph order with the tensor's shape and values is chosen, so every consumer of that value sees
    the quantised one, as every consumer of the Q/DQ model's tensor reads its DequantizeLinear.
    """
    expected = onnx_values(onnx_path, names, inputs)
    computed = torch_values(model, torch.from_numpy(inputs))
    found, missing = {}, []
    for name in names:
        node = next((n for n, v in computed.items() if same_value(v, expected[name])), None)
        if node is None:
            missing.append(name)
        else:
            found[name] = node
    if missing:
        raise LookupError(f"no torch value matches ONNX tensor(s) {', '.join(missing[:3])}")
    return found


# -- the fake-quantised model --------------------------------------------------------------------------------
@dataclass
class QatModel:
    """The fake-quantised graph; it shares its layers with ``float_model``, whose weights QAT trains."""
    module: fx.GraphModule
    float_model: fx.GraphModule
    quantizers: list[ActivationQuantizer]

    def ranges(self) -> dict[str, float]:
        return {name: q.amax for q in self.quantizers for name in q.onnx_names}

    def release(self) -> None:
        """Drop the weight parametrisations: ``float_model`` keeps the trained float weights."""
        for module in weighted_modules(self.float_model):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def build_qat_model(folded: fx.GraphModule, located: dict[str, fx.Node], amax: dict[str, float]) -> QatModel:
    """Insert one activation quantiser per located value and parametrise every weight."""
    float_model = folded
    qat = fx.GraphModule(float_model, copy.deepcopy(float_model.graph))
    nodes = {n.name: n for n in qat.graph.nodes}
    by_node: dict[str, list[str]] = {}
    for name, node in located.items():
        by_node.setdefault(node.name, []).append(name)
    quantizers = []
    for index, (node_name, onnx_names) in enumerate(by_node.items()):
        quantizer = ActivationQuantizer(max(amax[n] for n in onnx_names), onnx_names)
        target = f"edgekit_qat_{index}"
        qat.add_submodule(target, quantizer)
        source = nodes[node_name]
        with qat.graph.inserting_after(source):
            inserted = qat.graph.call_module(target, (source,))
        source.replace_all_uses_with(inserted, delete_user_cb=lambda user, inserted=inserted: user is not inserted)
        quantizers.append(quantizer)
    qat.graph.lint()
    qat.recompile()
    for module in weighted_modules(float_model):
        parametrize.register_parametrization(module, "weight", WeightQuantizer(weight_axis(module)))
    return QatModel(qat, float_model, quantizers)


def no_inplace(model: nn.Module) -> nn.Module:
    """In-place activations would overwrite values the matcher and the quantisers read."""
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model


# -- training --------------------------------------------------------------------------------------------------
@dataclass
class QatSettings:
    epochs: int
    lr: float = 1e-3
    range_lr: float = 5e-2
    max_grad_norm: float = 2.0
    batch_size: int = 64
    momentum: float = 0.9
    augment: tuple[str, ...] = ()
    seed: int = 0
    output: OutputKey = 0  # the classifier among the model's outputs (model.output)


def finetune(qat: QatModel, teacher: nn.Module, batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
             settings: QatSettings, steps_per_epoch: int,
             progress: Callable[[int, float], None] | None = None, say: Say | None = None) -> None:
    """Distillation from the FP32 model: SGD (cosine, clipped gradient) on the weights, Adam on the log-thresholds.

    ``say`` gets a line every few seconds inside an epoch (a large model's QAT epoch runs for minutes)."""
    from ...progress import ticker
    from ..prune.structured import distillation_loss

    torch.manual_seed(settings.seed)
    ranges = [q.log_amax for q in qat.quantizers]
    ids = {id(p) for p in ranges}
    weights = [p for p in qat.module.parameters() if id(p) not in ids]
    sgd = torch.optim.SGD(weights, lr=settings.lr, momentum=settings.momentum, nesterov=settings.momentum > 0)
    adam = torch.optim.Adam(ranges, lr=settings.range_lr) if ranges else None
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, max(1, settings.epochs * steps_per_epoch))
    loss_fn = distillation_loss(teacher.eval(), DISTILL_TEMPERATURE, DISTILL_ALPHA, settings.output)
    # under torchrun: DDP, each rank taking its share of every global batch (the same steps as one process)
    net = distributed.wrap(qat.module, device_of(qat.module)) if distributed.active() else qat.module
    for epoch in range(settings.epochs):
        net.train()
        total, count = 0.0, 0
        tick = ticker(say, f"QAT epoch {epoch + 1}/{settings.epochs}", steps_per_epoch, "batches")
        for step, (inputs, labels, weight) in enumerate(distributed.shares(batches(settings.seed + epoch))):
            sgd.zero_grad(set_to_none=True)
            if adam:
                adam.zero_grad(set_to_none=True)
            loss = loss_fn(select(net(inputs), settings.output), labels, inputs)
            (loss * weight).backward()
            # a badly calibrated start saturates most activations and the distillation gradient is then
            # ~30x its usual norm (measured on ResNet-20): unclipped, the first steps wreck the weights
            nn.utils.clip_grad_norm_(weights, settings.max_grad_norm)
            sgd.step()
            if adam:
                adam.step()
            schedule.step()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
            tick(step + 1)
        total, count = distributed.total([total, count])
        if progress and distributed.is_main():
            progress(epoch + 1, total / max(1, count))
    distributed.take_main_weights(qat.module)
    qat.module.eval()


# -- the whole QAT pass ----------------------------------------------------------------------------------------
@dataclass
class QatOutcome:
    float_onnx: Path
    table: CalibrationTable
    initial: dict[str, float]
    learned: dict[str, float]
    seconds: float
    info: dict = field(default_factory=dict)


def learned_table(table: CalibrationTable, learned: dict[str, float]) -> CalibrationTable:
    """``table`` with the learned thresholds.

    The CPU writer uses [max(min, -amax), min(max, amax)]; for a learned tensor the learned amax is the
    range, so each observed side that is non-zero becomes ±amax (a ReLU output keeps [0, amax], all 256
    uint8 levels) — otherwise an observed maximum from poor calibration images would still cap it.
    """
    ranges = dict(table.ranges)
    for name, amax in learned.items():
        if name not in ranges:
            raise KeyError(f"learned range for {name!r}, which the exported model does not have")
        observed = ranges[name]
        ranges[name] = TensorRange(amax=amax, lowest=-amax if observed.lowest < 0 else observed.lowest,
                                   highest=amax if observed.highest > 0 else observed.highest)
    return CalibrationTable(f"qat({table.method})", table.images, ranges, table.percentile)


def scale_mismatches(qdq_model: Path, learned: dict[str, float]) -> list[str]:
    """Tensors whose Q/DQ scale is not learned amax / 127 (float32): empty when the export is consistent."""
    written = quantised_activations(qdq_model)
    return [name for name, amax in learned.items()
            if name not in written or not np.isclose(written[name], amax, rtol=1e-6, atol=0)]


def trace(model: nn.Module) -> fx.GraphModule:
    """The model as an fx graph with its optional ``forward`` arguments fixed at their defaults (a ``mask=None``
    traced as an input would take the ``if mask is not None`` branch for good); LookupError when fx cannot."""
    import inspect

    optional = {name: parameter.default
                for name, parameter in list(inspect.signature(model.forward).parameters.items())[1:]
                if parameter.default is not inspect.Parameter.empty}
    try:
        return fx.symbolic_trace(model, concrete_args=optional or None)
    except Exception as exc:  # noqa: BLE001 - TraceError, TypeError...: whatever fx cannot follow
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        raise LookupError(f"QAT needs a model torch.fx can trace ({type(exc).__name__}: {first})") from None


def run_qat(folded: nn.Module, fp32_onnx: Path, ptq_qdq: Path, ptq_table: CalibrationTable, *,
            train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]], steps_per_epoch: int,
            calibration: Callable[[Path], CalibrationTable], match_inputs: np.ndarray,
            export: Callable[[nn.Module, Path], None], settings: QatSettings, work: Path,
            say: Say = print) -> QatOutcome:
    """QAT from the PTQ ranges; returns the QAT float model's ONNX and the calibration table to write from.

    ``calibration(onnx)`` re-collects statistics on the fine-tuned float model (the tensors QAT did not
    learn — those only the CPU model quantises — then have ranges of the weights they will run with);
    the learned thresholds override it where they exist.
    """
    clock = time.perf_counter()
    teacher = copy.deepcopy(folded).eval()
    student = no_inplace(copy.deepcopy(folded).eval())
    if not isinstance(student, fx.GraphModule):
        student = trace(student)
    initial = quantised_activations(ptq_qdq)
    for name in initial:  # the table's amax, not the written scale's float32 rounding
        initial[name] = float(np.float32(ptq_table.amax(name)))
    located = locate(student, fp32_onnx, sorted(initial), match_inputs[:MATCH_IMAGES])
    qat = build_qat_model(student, located, initial)
    say(f"QAT: {len(qat.quantizers)} activation quantisers from the calibration table, "
        f"{len(weighted_modules(student))} per-channel weight quantisers; {settings.epochs} epoch(s)")
    finetune(qat, teacher, train_batches, settings, steps_per_epoch,
             progress=lambda e, loss: say(f"QAT epoch {e}/{settings.epochs}: loss {loss:.4f}"), say=say)
    learned = qat.ranges()
    qat.release()
    float_onnx = work / "model.qat.onnx"
    export(student, float_onnx)
    table = learned_table(calibration(float_onnx), learned)
    return QatOutcome(float_onnx, table, initial, learned, time.perf_counter() - clock,
                      info={"epochs": settings.epochs, "quantizers": len(qat.quantizers),
                            "median_range_change": float(np.median([learned[n] / max(initial[n], 1e-12)
                                                                    for n in learned]))})


# -- QAT as a route of the INT8 stage: when it runs, and the better of PTQ and QAT --------------------
def qat_reason(config: Config, calibrated: dict) -> str | None:
    """Why QAT runs after PTQ (``calibrated``: the PTQ result's info), or None when it does not."""
    section = config.quantize
    if section.qat_epochs == 0:
        return None
    if section.qat_epochs != "auto":
        return f"quantize.qat_epochs = {section.qat_epochs}"
    if not calibrated["within_budget"]:
        return "post-training INT8 misses quantize.max_accuracy_drop"
    if len(calibrated["fp_layers"]) > section.qat_max_float_layers:
        return (f"the fallback keeps {len(calibrated['fp_layers'])} layer(s) in floating point "
                f"(quantize.qat_max_float_layers = {section.qat_max_float_layers})")
    return None


def quantize_aware(config: Config, model: nn.Module, fp32: Path, calibrated: Path, result: QuantizeResult,
                   work: Path, data: Dataset, mean: list[float], std: list[float], fp32_top1: float,
                   say: Say) -> QuantizeResult:
    """QAT from the calibration in ``calibrated`` (the PTQ files and ``result``); the better of PTQ (with
    its fallback) and QAT (with a fallback of its own if it still misses) is written into ``work``.

    ``model`` is the pruned, BN-folded torch model ``fp32`` was exported from.
    """
    section = config.quantize
    table = CalibrationTable.from_json((calibrated / CALIBRATION_JSON).read_text())
    previous = Candidate(result.info.get("chosen", "INT8 PTQ"), calibrated, fp32, table, dict(result.accuracy),
                         list(result.excluded), list(result.sensitivity), info=dict(result.info),
                         unfaithful=dict(result.info.get("unfaithful") or {}),
                         weighted_only=bool(result.info.get("weighted_only", result.excluded)))
    epochs = section.qat_auto_epochs if section.qat_epochs == "auto" else int(section.qat_epochs)
    images = calibration_images(config, data, mean, std)
    test = normalize(data.test.images, mean, std)
    candidates, scratch = [previous], [work / "int8-qat", work / "int8-qat-fallback"]
    qat = qat_candidate(config, model, fp32, table, images, data, mean, std, epochs, scratch[0], say)
    fidelity = device_rule(config, fp32, test, data.test.labels)  # against the original FP32 model
    if qat is not None:
        qat.unfaithful = fidelity.failures({name: qat.directory / name for name in qat.accuracy})
        candidates.append(qat)
        # layers left in float run QAT's float weights: when those alone fail the device's rule against the FP32
        # model, no fallback from QAT can pass it
        drifted = fidelity.failures({QAT_FLOAT: qat.float_onnx})
        if drifted and not qat.meets(fp32_top1, section.max_accuracy_drop):
            say(f"no fallback from QAT: its float model itself would fail the device's validation against the FP32 "
                f"model ({drifted[QAT_FLOAT]})")
        fallback = None if drifted else mixed_precision_fallback(config, qat, images, test, data.test.labels,
                                                                 fp32_top1, say, fidelity)
        if fallback is not None:
            candidates.append(fallback)
    best = choose(candidates, fp32_top1, section.max_accuracy_drop)
    info = {k: result.info[k] for k in ("method", "images", "calibrate_s", "percentile") if k in result.info}
    final = finish(work, best, candidates, scratch, info, fp32_top1, section.max_accuracy_drop, config.input.shape)
    final.rows = [row for row in final.rows if row["stage"] != previous.name]  # PTQ's rows are already shown
    say(f"INT8: {final.info['int8']} chosen ({best.name}, top-1 {best.top1:.2%}, "
        f"{len(best.excluded)} layer(s) in float)")
    return final


def qat_candidate(config: Config, model: nn.Module, fp32: Path, table: CalibrationTable, images: np.ndarray,
                  data: Dataset, mean: list[float], std: list[float], epochs: int, directory: Path,
                  say: Say) -> Candidate | None:
    """QAT from the PTQ ranges; None (with the reason said) when the model's values cannot be matched."""
    section = config.quantize
    fresh(directory)
    placement = directory / "placement.qdq.onnx"  # PTQ's Q/DQ with every layer in INT8: where QAT quantises
    write_trt_qdq(fp32, table, placement)
    settings = QatSettings(epochs=epochs, lr=section.qat_lr, batch_size=config.train.batch_size,
                           momentum=config.train.momentum, augment=tuple(config.train.augment),
                           seed=config.train.seed, output=config.model.output)
    try:
        outcome = run_qat(
            model, fp32, placement, table,
            train_batches=lambda seed: batches(data.train, settings.batch_size, mean, std, shuffle=True,
                                               augment=settings.augment, seed=seed),
            steps_per_epoch=math.ceil(len(data.train) / settings.batch_size),
            # QAT fine-tunes on the training split: the tensors it learns no range for (those only the CPU
            # model quantises, e.g. convolution outputs) are calibrated on that split too, not on
            # quantize.source, so they match the weights QAT trained
            calibration=lambda onnx_path: calibrate(onnx_path, training_sample(data, len(images), mean, std),
                                                    config),
            match_inputs=images,
            export=lambda net, path: export_onnx(net, path, config.input.shape, opset=config.optimize.opset,
                                                 input_name=config.input.name, output=config.model.output),
            settings=settings, work=directory, say=say)
    except LookupError as exc:
        say(f"QAT skipped: {exc}; keeping post-training quantisation")
        return None
    write_all(outcome.float_onnx, outcome.table, directory)
    mismatched = scale_mismatches(directory / MODEL_INT8_QDQ, outcome.learned)
    if mismatched:
        raise RuntimeError(f"QAT export is inconsistent: Q/DQ scales are not the learned ranges for {mismatched[:3]}")
    test = normalize(data.test.images, mean, std)
    accuracy = accuracy_of(directory, test, data.test.labels)
    info = dict(outcome.info, seconds=outcome.seconds, float_top1=onnx_top1(outcome.float_onnx, test,
                                                                              data.test.labels))
    say(f"QAT ({epochs} epochs, {outcome.seconds:.0f}s): INT8 top-1 {min(accuracy.values()):.2%}")
    return Candidate(f"INT8 QAT ({epochs} epochs)", directory, outcome.float_onnx, outcome.table, accuracy,
                     info={"qat": info})
