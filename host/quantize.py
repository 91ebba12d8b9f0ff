"""The INT8 stage of ``optimize``: calibrate once, write every INT8 artefact, measure, and fall back
to mixed precision when the accuracy budget is missed.

Calibration and the writers live in ``edgekit.calibration`` (no torch); this module supplies the
project's images with its preprocessing and judges accuracy on held-out data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.calibration.collect import collect, make_table
from edgekit.calibration.cpu import write_cpu_int8
from edgekit.calibration.trt_qdq import WEIGHTED, write_trt_qdq
from edgekit.device.manifest import CALIBRATION_CACHE, CALIBRATION_JSON, MODEL_INT8_CPU, MODEL_INT8_QDQ

from .config import Config
from .data import IMAGE_SUFFIXES, Dataset, normalize
from .errors import ConfigError
from .export import onnx_predict, onnx_top1
from .prevalidate import Fidelity

Say = Callable[[str], None]
SENSITIVITY_IMAGES = 256


@dataclass
class QuantizeResult:
    files: list[str]
    accuracy: dict[str, float]
    excluded: list[str] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def calibration_images(config: Config, data: Dataset, mean: list[float], std: list[float]) -> np.ndarray:
    """``quantize.images`` preprocessed inputs: a seeded sample of the training split, an .npy, or a folder."""
    section, shape = config.quantize, config.input.shape
    if section.source is None:
        pick = np.random.default_rng(0).permutation(len(data.train))[:section.images]
        return normalize(data.train.images[np.sort(pick)], mean, std)
    source = config.resolve(section.source)
    if source.suffix == ".npy":
        array = np.load(source, allow_pickle=False)
        if array.ndim == 4 and array.shape[-1] == shape[0] and array.shape[1] != shape[0]:
            array = array.transpose(0, 3, 1, 2)
        if list(array.shape[1:]) != list(shape):
            raise ConfigError(f"{config.path.name}: quantize.source: {source} holds images of shape "
                              f"{list(array.shape[1:])}, the model takes {shape}")
        array = array[:section.images]
        return normalize(array, mean, std) if array.dtype == np.uint8 else array.astype(np.float32)
    if source.is_dir():
        return normalize(_folder_images(source, shape, section.images), mean, std)
    raise ConfigError(f"{config.path.name}: quantize.source: {source} is neither an .npy file nor a folder")


def _folder_images(folder: Path, shape: list[int], limit: int) -> np.ndarray:
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ConfigError(f"quantize.source: no images in {folder}")
    mode = "RGB" if shape[0] == 3 else "L"
    images = []
    for path in paths:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode).resize((shape[2], shape[1]), Image.BILINEAR), dtype=np.uint8)
        images.append(array.transpose(2, 0, 1) if array.ndim == 3 else array[None])
    return np.stack(images)


def weighted_nodes(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1
            and n.input[1] in initializers]


Writer = Callable[[set[str], Path], None]


def rank_sensitivity(fp32: Path, writer: Writer, inputs: np.ndarray, work: Path) -> list[dict]:
    """Quantise one layer at a time and measure how far the logits move (MSE against FP32), worst first."""
    reference = onnx_predict(fp32, inputs)
    nodes = weighted_nodes(fp32)
    probe = work / "sensitivity.onnx"
    scores = []
    for node in nodes:
        writer(set(nodes) - {node}, probe)
        scores.append({"node": node, "mse": float(np.mean((onnx_predict(probe, inputs) - reference) ** 2))})
    probe.unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s["mse"])


def quantize(config: Config, fp32: Path, work: Path, data: Dataset, mean: list[float], std: list[float],
             fp32_top1: float, say: Say) -> QuantizeResult:
    section = config.quantize
    clock = time.perf_counter()
    images = calibration_images(config, data, mean, std)
    batch = section.batch_size
    collected = collect(fp32, (images[i:i + batch] for i in range(0, len(images), batch)))
    table = make_table(collected, section.method, section.percentile)
    table.write(work / CALIBRATION_JSON, work / CALIBRATION_CACHE)
    write_trt_qdq(fp32, table, work / MODEL_INT8_QDQ)
    write_cpu_int8(fp32, table, work / MODEL_INT8_CPU)
    calibrate_s = time.perf_counter() - clock
    say(f"calibrated {collected.images} images ({section.method}) and wrote both INT8 models in {calibrate_s:.1f}s")
    test = normalize(data.test.images, mean, std)
    accuracy = {MODEL_INT8_CPU: onnx_top1(work / MODEL_INT8_CPU, test, data.test.labels),
                MODEL_INT8_QDQ: onnx_top1(work / MODEL_INT8_QDQ, test, data.test.labels)}
    result = QuantizeResult([MODEL_INT8_QDQ, MODEL_INT8_CPU, CALIBRATION_JSON, CALIBRATION_CACHE], accuracy,
                            info={"method": section.method, "images": collected.images, "calibrate_s": calibrate_s,
                                  "percentile": table.percentile})
    budget = section.max_accuracy_drop
    samples = min(config.optimize.reference_samples, len(test))
    overrides = config.validation.model_dump(exclude_none=True)
    fidelity = Fidelity(fp32, test[:samples], data.test.labels[:samples], overrides)
    unfaithful = fidelity.failures({name: work / name for name in accuracy})
    result.info["unfaithful"] = unfaithful
    if (budget is None or fp32_top1 - min(accuracy.values()) <= budget) and not unfaithful:
        return result
    for name, reason in unfaithful.items():
        say(f"{name} would fail the device's validation against the FP32 model ({reason})")
    if not section.mixed_precision:
        say(f"INT8 loses {fp32_top1 - min(accuracy.values()):.2%} top-1, over quantize.max_accuracy_drop {budget}")
        return result
    return _mixed_precision(config, fp32, work, table, images, test, data.test.labels, fp32_top1, result, say,
                            fidelity)


def _mixed_precision(config: Config, fp32: Path, work: Path, table, images: np.ndarray, test: np.ndarray,
                     labels: np.ndarray, fp32_top1: float, result: QuantizeResult, say: Say,
                     fidelity: Fidelity) -> QuantizeResult:
    """Leave the most sensitive layers in floating point, one at a time, until the budget is met and every
    INT8 file passes the device's validation rule against the FP32 model (``prevalidate.Fidelity``).

    Layers are ranked with the writer of the model that misses the budget by more; both models then
    keep the same layers in float.
    """
    budget = config.quantize.max_accuracy_drop
    budget = 1.0 if budget is None else budget
    writers: dict[str, Writer] = {
        MODEL_INT8_QDQ: lambda exclude, out: write_trt_qdq(fp32, table, out, exclude=exclude),
        MODEL_INT8_CPU: lambda exclude, out: write_cpu_int8(fp32, table, out, exclude=exclude, weighted_only=True),
    }
    worst = min(result.accuracy, key=result.accuracy.get)
    worst = next(iter(result.info.get("unfaithful") or {}), worst)  # rank with the file the device would reject
    say(f"INT8 loses {fp32_top1 - result.accuracy[worst]:.2%} top-1 (budget {budget:.2%}); "
        "ranking layer sensitivity")
    ranking = rank_sensitivity(fp32, writers[worst], images[:SENSITIVITY_IMAGES], work)
    excluded: list[str] = []
    for entry in [None] + ranking:  # first: only the weighted layers in INT8, nothing excluded yet
        if entry is not None:
            excluded.append(entry["node"])
        for name, writer in writers.items():
            writer(set(excluded), work / name)
        result.accuracy = {name: onnx_top1(work / name, test, labels) for name in writers}
        unfaithful = fidelity.failures({name: work / name for name in writers})
        if fp32_top1 - min(result.accuracy.values()) <= budget and not unfaithful:
            break
    result.excluded, result.sensitivity = excluded, ranking
    result.info["unfaithful"] = unfaithful
    met = fp32_top1 - min(result.accuracy.values()) <= budget and not unfaithful
    say(f"left {len(excluded)} layer(s) in floating point: {', '.join(excluded) or 'none'}"
        + ("" if met else " — the budget is still not met with every layer in floating point"))
    return result
