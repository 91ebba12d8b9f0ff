"""The INT8 stage of ``optimize``: calibrate once, write every INT8 artefact, measure, and fall back
to mixed precision when the accuracy budget is missed.

Calibration and the writers live in ``edgekit.calibration`` (no torch); this module supplies the
project's images with its preprocessing and judges accuracy on held-out data.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ....calibration.collect import collect, make_table
from ....calibration.cpu import write_cpu_int8
from ....calibration.table import CalibrationTable
from ....calibration.trt_qdq import WEIGHTED, write_trt_qdq
from ....device.contract.manifest import CALIBRATION_CACHE, CALIBRATION_JSON, MODEL_INT8_CPU, MODEL_INT8_QDQ, MODEL_QAT
from ...config import Config
from ...errors import ConfigError
from ...train.data import IMAGE_SUFFIXES, Dataset, normalize, read_image
from ..export.onnx_export import onnx_predict, onnx_top1
from ..prevalidate import Fidelity
from ..timing import onnx_latency

Say = Callable[[str], None]
SENSITIVITY_IMAGES = 256
QAT_FLOAT = MODEL_QAT  # the float model of QAT's INT8 files (TensorRT's implicit INT8 builds it)
INT8_FILES = (MODEL_INT8_QDQ, MODEL_INT8_CPU, CALIBRATION_JSON, CALIBRATION_CACHE)


@dataclass
class QuantizeResult:
    files: list[str]
    accuracy: dict[str, float]
    excluded: list[str] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)


def calibration_images(config: Config, data: Dataset, mean: list[float], std: list[float]) -> np.ndarray:
    """``quantize.images`` preprocessed inputs: a seeded sample of the training split, an .npy, or a folder."""
    section, shape = config.quantize, config.input.shape
    if section.source is None:
        return training_sample(data, section.images, mean, std)
    source = config.resolve(section.source)
    if source.suffix == ".npy":
        array = _load_npy(config, source)
        if array.ndim == 4 and array.shape[-1] == shape[0] and array.shape[1] != shape[0]:
            array = array.transpose(0, 3, 1, 2)
        if array.ndim != 4 or list(array.shape[1:]) != list(shape):
            raise ConfigError(f"{config.path.name}: quantize.source: {source} holds images of shape "
                              f"{list(array.shape[1:])}, the model takes {shape}")
        array = array[:section.images]
        return normalize(array, mean, std) if array.dtype == np.uint8 else array.astype(np.float32)
    if source.is_dir():
        return normalize(_folder_images(source, shape, section.images, config.data.skip_unreadable), mean, std)
    raise ConfigError(f"{config.path.name}: quantize.source: {source} is neither an .npy file nor a folder")


def training_sample(data: Dataset, count: int, mean: list[float], std: list[float]) -> np.ndarray:
    """A seeded sample of ``count`` preprocessed training images (the same one on every run)."""
    pick = np.random.default_rng(0).permutation(len(data.train))[:count]
    return normalize(data.train.images[np.sort(pick)], mean, std)


def _load_npy(config: Config, source: Path) -> np.ndarray:
    """The calibration array, checked where it is read: a damaged, pickled or non-numeric file is one line."""
    try:
        array = np.load(source, allow_pickle=False)
    except OSError as exc:
        raise ConfigError(f"{config.path.name}: quantize.source: cannot read {source} "
                          f"({exc.strerror or exc}); check the path and its permissions") from None
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, EOFError... on damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise ConfigError(f"{config.path.name}: quantize.source: {source} is not a readable .npy array ({first}); "
                          "save it again with numpy.save(path, images)") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "uif" or array.size == 0:
        raise ConfigError(f"{config.path.name}: quantize.source: {source} must hold numeric images (N×C×H×W), "
                          f"not {getattr(array, 'dtype', type(array).__name__)} of {list(np.shape(array))}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ConfigError(f"{config.path.name}: quantize.source: {source} holds NaN or infinite values")
    return array


def _folder_images(folder: Path, shape: list[int], limit: int, skip_unreadable: bool = False) -> np.ndarray:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    mode = "RGB" if shape[0] == 3 else "L"
    images = []
    for path in paths:
        image = read_image(path, (shape[1], shape[2]), mode, skip_unreadable)
        if image is not None:
            images.append(image)
        if len(images) == limit:
            break
    if not images:
        raise ConfigError(f"quantize.source: no readable images in {folder}; add .png/.jpg images or remove "
                          "quantize.source (the training images are used)")
    return np.stack(images)


def weighted_nodes(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED and len(n.input) > 1
            and n.input[1] in initializers]


Writer = Callable[[set[str], Path], None]


def rank_sensitivity(fp32: Path, writer: Writer, inputs: np.ndarray, work: Path, say: Say | None = None
                     ) -> list[dict]:
    """Quantise one layer at a time and measure how far the logits move (MSE against FP32), worst first."""
    from ...progress import ticker

    reference = onnx_predict(fp32, inputs)
    nodes = weighted_nodes(fp32)
    probe = work / "sensitivity.onnx"
    scores = []
    tick = ticker(say, "ranking layer sensitivity", len(nodes), "layers")
    for index, node in enumerate(nodes):
        writer(set(nodes) - {node}, probe)
        scores.append({"node": node, "mse": float(np.mean((onnx_predict(probe, inputs) - reference) ** 2))})
        tick(index + 1)
    probe.unlink(missing_ok=True)
    return sorted(scores, key=lambda s: -s["mse"])


def quantize(config: Config, fp32: Path, work: Path, data: Dataset, mean: list[float], std: list[float],
             fp32_top1: float, say: Say) -> QuantizeResult:
    """PTQ: calibrate once and write the INT8 files into ``work``; then the mixed-precision fallback when the
    budget is missed — unless QAT was asked for by epochs (``qat_epochs = N``): it starts from plain PTQ.
    """
    section = config.quantize
    clock = time.perf_counter()
    images = calibration_images(config, data, mean, std)
    table = calibrate(fp32, images, config)
    ptq_dir = fresh(work / "int8-ptq")
    write_all(fp32, table, ptq_dir)
    calibrate_s = time.perf_counter() - clock
    say(f"calibrated {len(images)} images ({section.method}) and wrote both INT8 models in {calibrate_s:.1f}s")
    test = normalize(data.test.images, mean, std)
    ptq = Candidate("INT8 PTQ", ptq_dir, fp32, table, accuracy_of(ptq_dir, test, data.test.labels))
    fidelity = device_rule(config, fp32, test, data.test.labels)
    ptq.unfaithful = fidelity.failures({name: ptq_dir / name for name in ptq.accuracy})
    for name, reason in ptq.unfaithful.items():
        say(f"{name} would fail the device's validation against the FP32 model ({reason})")
    info = {"method": section.method, "images": len(images), "calibrate_s": calibrate_s,
            "percentile": table.percentile}
    candidates = [ptq]
    if section.qat_epochs in (0, "auto"):
        fallback = mixed_precision_fallback(config, ptq, images, test, data.test.labels, fp32_top1, say, fidelity)
        if fallback is not None:
            candidates.append(fallback)
    best = choose(candidates, fp32_top1, section.max_accuracy_drop)
    return finish(work, best, candidates, [ptq_dir, ptq_dir.with_name(ptq_dir.name + "-fallback")], info,
                   fp32_top1, section.max_accuracy_drop, config.input.shape, rows=section.qat_epochs != 0)


def device_rule(config: Config, fp32: Path, test: np.ndarray, labels: np.ndarray) -> Fidelity:
    """The device's validation rule for INT8 files against the FP32 model, on the reference images."""
    samples = min(config.optimize.reference_samples, len(test))
    return Fidelity(fp32, test[:samples], labels[:samples], config.validation.model_dump(exclude_none=True))


@dataclass
class Candidate:
    """One way of writing the INT8 files: its directory, the float model and ranges they come from, top-1."""
    name: str
    directory: Path
    float_onnx: Path
    table: CalibrationTable
    accuracy: dict[str, float]
    excluded: list[str] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    unfaithful: dict[str, str] = field(default_factory=dict)  # files the device's validation would reject
    weighted_only: bool = False  # the CPU file quantises only the weighted layers (the fallback's route)

    @property
    def top1(self) -> float:
        """The INT8 file that loses most decides (both ship)."""
        return min(self.accuracy.values())

    def meets(self, fp32_top1: float, budget: float | None) -> bool:
        return (budget is None or fp32_top1 - self.top1 <= budget + 1e-9) and not self.unfaithful


def choose(candidates: list[Candidate], fp32_top1: float, budget: float | None) -> Candidate:
    """Within budget first, then fewest layers in float (each breaks INT8 fusion), then the full INT8
    placement over the weighted-only one (float Adds break fusion too), then top-1; when none is within
    budget, the most accurate."""
    def key(c: Candidate) -> tuple:  # ties on the worse file: the better other file decides
        meets = c.meets(fp32_top1, budget)
        return (meets, -len(c.excluded) if meets else 0, not c.weighted_only if meets else 0, c.top1,
                sum(c.accuracy.values()))

    return max(candidates, key=key)


def _verdict(candidate: Candidate, fp32_top1: float, budget: float | None) -> str:
    drop = f"loses {fp32_top1 - candidate.top1:.2%} top-1"
    if not candidate.meets(fp32_top1, budget):
        return f"{drop}, over the budget {budget:.2%}"
    return f"{drop} with {len(candidate.excluded)} layer(s) in floating point (quantize.qat_max_float_layers)"


def calibrate(fp32: Path, images: np.ndarray, config: Config) -> CalibrationTable:
    batch = config.quantize.batch_size
    collected = collect(fp32, (images[i:i + batch] for i in range(0, len(images), batch)))
    return make_table(collected, config.quantize.method, config.quantize.percentile)


def write_all(fp32: Path, table: CalibrationTable, directory: Path, exclude: set[str] | frozenset[str] = frozenset()
              ) -> None:
    """The four INT8 artefacts from one table: both models and both calibration files."""
    table.write(directory / CALIBRATION_JSON, directory / CALIBRATION_CACHE)
    write_trt_qdq(fp32, table, directory / MODEL_INT8_QDQ, exclude=exclude)
    write_cpu_int8(fp32, table, directory / MODEL_INT8_CPU, exclude=exclude, weighted_only=bool(exclude))


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def accuracy_of(directory: Path, test: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: onnx_top1(directory / name, test, labels) for name in (MODEL_INT8_CPU, MODEL_INT8_QDQ)}


def finish(work: Path, best: Candidate, candidates: list[Candidate], scratch: list[Path], info: dict,
            fp32_top1: float, budget: float | None, shape: list[int], rows: bool = False) -> QuantizeResult:
    """Copy the chosen files into ``work`` and remove the ``scratch`` directories; when there was a choice,
    every candidate is a stage-table row."""
    if best.directory.resolve() != work.resolve():
        for name in INT8_FILES:
            shutil.copyfile(best.directory / name, work / name)
    if best.info.get("qat"):  # the fine-tuned float model the INT8 files come from (other writers need it)
        shutil.copyfile(best.float_onnx, work / QAT_FLOAT)
    table_rows = []
    for candidate in candidates if len(candidates) > 1 or rows else []:
        cpu_model = candidate.directory / MODEL_INT8_CPU
        table_rows.append({"stage": candidate.name, "top1": candidate.top1, "top1_by_file": dict(candidate.accuracy),
                           "fp_layers": len(candidate.excluded),
                           "note": _route_note(candidate), "chosen": candidate is best,
                           "onnx_bytes": cpu_model.stat().st_size, "latency_ms": onnx_latency(cpu_model, shape)})
    for directory in scratch:
        shutil.rmtree(directory, ignore_errors=True)
    used = "qat" if best.info.get("qat") else "ptq"
    qat = next((c.info["qat"] for c in candidates if c.info.get("qat")), None)
    info = dict(info, int8=used + ("+fallback" if best.weighted_only else ""), chosen=best.name,
                fp_layers=list(best.excluded), weighted_only=best.weighted_only,
                within_budget=best.meets(fp32_top1, budget), qat=qat,
                unfaithful=dict(best.unfaithful))
    return QuantizeResult(list(INT8_FILES), dict(best.accuracy), list(best.excluded), list(best.sensitivity),
                          info=info, rows=table_rows)


def _route_note(candidate: Candidate) -> str:
    """Layers in float, and why the device's validation would reject the route (so it was not chosen)."""
    note = f"{len(candidate.excluded)} layer(s) in float"
    failed = next(iter(candidate.unfaithful.items()), None)
    return note + (f"; device validation would fail ({failed[0]}: {failed[1]})" if failed else "")


def mixed_precision_fallback(config: Config, base: Candidate, images: np.ndarray, test: np.ndarray,
                             labels: np.ndarray, fp32_top1: float, say: Say, fidelity: Fidelity) -> Candidate | None:
    """Leave the most sensitive layers in floating point, one at a time, until the budget is met and every
    INT8 file passes the device's validation rule against the FP32 model (``prevalidate.Fidelity``).

    Layers are ranked with the writer of the model that misses the budget by more; both models then
    keep the same layers in float. None when the base needs no fallback or mixed precision is off.
    """
    section = config.quantize
    budget = section.max_accuracy_drop
    if base.meets(fp32_top1, budget):
        return None
    if not section.mixed_precision:
        say(f"{base.name}: INT8 loses {fp32_top1 - base.top1:.2%} top-1, over quantize.max_accuracy_drop {budget}")
        return None
    fp32, table = base.float_onnx, base.table
    writers: dict[str, Writer] = {
        MODEL_INT8_QDQ: lambda exclude, out: write_trt_qdq(fp32, table, out, exclude=exclude),
        MODEL_INT8_CPU: lambda exclude, out: write_cpu_int8(fp32, table, out, exclude=exclude, weighted_only=True),
    }
    worst = min(base.accuracy, key=base.accuracy.get)
    worst = next(iter(base.unfaithful), worst)  # rank with the file the device would reject
    say(f"{base.name}: INT8 loses {fp32_top1 - base.accuracy[worst]:.2%} top-1 (budget {budget:.2%}); "
        "trying INT8 on the weighted layers only")
    directory = fresh(base.directory.with_name(base.directory.name + "-fallback"))
    excluded: list[str] = []
    ranking: list[dict] = []
    remaining: Iterator[dict] | None = None
    while True:  # first: only the weighted layers in INT8, nothing excluded yet; then the most sensitive out
        for name, writer in writers.items():
            writer(set(excluded), directory / name)
        accuracy = {name: onnx_top1(directory / name, test, labels) for name in writers}
        unfaithful = fidelity.failures({name: directory / name for name in writers})
        if fp32_top1 - min(accuracy.values()) <= (1.0 if budget is None else budget) and not unfaithful:
            break
        if remaining is None:  # ranked only when needed: one model write and run per weighted layer
            say(f"ranking layer sensitivity ({len(weighted_nodes(fp32))} layers, one INT8 model written and run each)")
            ranking = rank_sensitivity(fp32, writers[worst], images[:SENSITIVITY_IMAGES], directory, say)
            remaining = iter(ranking)
        entry = next(remaining, None)
        if entry is None:
            break
        excluded.append(entry["node"])
    table.write(directory / CALIBRATION_JSON, directory / CALIBRATION_CACHE)
    candidate = Candidate(f"{base.name} + fallback", directory, fp32, table, accuracy, excluded, ranking,
                          info=dict(base.info), unfaithful=unfaithful, weighted_only=True)
    met = candidate.meets(fp32_top1, budget)
    say(f"left {len(excluded)} layer(s) in floating point: {', '.join(excluded) or 'none'}"
        + ("" if met else " — the budget is still not met with every layer in floating point"))
    return candidate
