"""Which model file each backend builds from: decided here and nowhere else.

The host asks the same question to decide what to upload (only the files the device will read) and the
agent to decide what to build, so the two cannot disagree. Pure functions of the backend (what it reads is
declared in ``runtimes``), the precision, the TensorRT INT8 mode and the CPU's ISA as the device reports it
(``cpu.describe_cpu``).

INT8 on CPUs: the U8S8 file (``model.int8.cpu.onnx``: uint8 activations) is the fast path for both ONNX
Runtime and OpenVINO, but on x86 without VNNI its uint8 × int8 pair sums can saturate int16, so there the
same U8S8 model with 7-bit weights (``model.int8.cpu.avx2.onnx``, reduce-range), which cannot saturate, is
used instead. A CPU whose flags could not be read is treated as the unsafe kind. A bundle without the 7-bit
file (older hosts) falls back to the U8S8 file.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

from .manifest import (
    CALIBRATION_CACHE,
    MODEL_FP16,
    MODEL_FP32,
    MODEL_INT8_CPU,
    MODEL_INT8_CPU_AVX2,
    MODEL_INT8_QDQ,
    MODEL_INT8_QDQ_FP16,
    MODEL_QAT,
)
from .runtimes import AUTO, Runtime, UnknownRuntime, auto_alone, auto_precisions, cpu_runtimes, fp16_runtimes, runtime

# Every model variant this module chooses between; any other bundle file is shipped as is.
MODEL_VARIANTS = (MODEL_FP32, MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ, MODEL_QAT)


class ModelChoiceError(ValueError):
    """The backend cannot run the requested precision; the message says what to change."""


def cpu_int8_file(cpu: Optional[Mapping[str, Any]], shipped: Optional[Iterable[str]] = None) -> str:
    """U8S8 where it cannot saturate (VNNI/AMX x86, ARM), its 7-bit-weight form elsewhere (unless the bundle
    ``shipped`` lacks that file)."""
    unsafe = not cpu or not cpu.get("flags_read", True) or cpu.get("u8s8_saturates", True)
    if unsafe and (shipped is None or MODEL_INT8_CPU_AVX2 in set(shipped)):
        return MODEL_INT8_CPU_AVX2
    return MODEL_INT8_CPU


def model_file(backend: str, precision: str, int8_mode: str = "explicit",
               cpu: Optional[Mapping[str, Any]] = None, shipped: Optional[Iterable[str]] = None) -> str:
    """The ONNX file ``backend`` builds ``precision`` from on a device with this CPU (``shipped``: the
    bundle's file names, when known)."""
    if backend == AUTO:
        raise ModelChoiceError("auto is not a backend: ask for each candidate (model_files.candidates)")
    if precision == AUTO:
        raise ModelChoiceError("auto is not a precision: ask for each candidate (model_files.job_candidates)")
    entry = _runtime(backend)
    if precision == "fp16" and not entry.fp16:
        raise ModelChoiceError("precision fp16 needs the {} backend; use fp32 or int8 with {}".format(
            " or ".join(fp16_runtimes()), backend))
    if precision != "int8":
        return MODEL_FP32
    if _implicit_int8(entry, precision, int8_mode):
        # implicit INT8 builds the float model calibration.cache's ranges belong to: QAT's when it shipped
        return MODEL_QAT if shipped is not None and MODEL_QAT in set(shipped) else MODEL_FP32
    if entry.qdq_int8:
        return MODEL_INT8_QDQ
    return cpu_int8_file(cpu, shipped)


def _runtime(backend: str) -> Runtime:
    try:
        return runtime(backend)
    except UnknownRuntime as exc:
        raise ModelChoiceError(str(exc)) from None


def _implicit_int8(entry: Runtime, precision: str, int8_mode: str) -> bool:
    """INT8 from the float model and calibration.cache, where the runtime has it and deploy.toml asks for it."""
    return entry.implicit_int8 and precision == "int8" and int8_mode != "explicit"


def candidates(backend: str, available: Iterable[str]) -> List[str]:
    """The backends a job may run: the one asked for, or for ``auto`` TensorRT where present, else
    every CPU runtime the device has (measured against each other on the job's model)."""
    if backend != AUTO:
        return [backend]
    have = set(available)
    alone = auto_alone(have)
    if alone is not None:
        return [alone]
    return [name for name in cpu_runtimes() if name in have]


def precisions(backend: str, precision: str) -> List[str]:
    """The precisions a job builds on ``backend``: every one it has for ``auto``; otherwise the one asked for,
    then the others it has (built only when the bundle carries their files, measured for the report's advice)."""
    have = list(auto_precisions(backend))
    if precision == AUTO:
        return have
    return [precision] + [p for p in have if p != precision]


def job_candidates(backends: Sequence[str], precision: str, shipped: Iterable[str], int8_mode: str = "explicit",
                   cpu: Optional[Mapping[str, Any]] = None) -> List[Tuple[str, str]]:
    """(backend, precision) pairs a job builds, validates and races: the requested ones always (a missing file
    then fails the job with the reason), the others where the bundle carries the file they build from."""
    shipped = list(shipped)
    pairs, refused = [], []
    for backend in backends:
        for each in precisions(backend, precision):
            requested = precision in (AUTO, each)
            try:
                name = model_file(backend, each, int8_mode, cpu, shipped)
            except ModelChoiceError as exc:
                if requested and precision != AUTO:
                    refused.append(exc)  # this runtime cannot build the precision asked for: the others may
                    break
                continue
            if (requested and precision != AUTO) or name in shipped:
                pairs.append((backend, each))
    if refused and len(refused) == len(backends):
        raise refused[0]
    return pairs


def file_precision(name: str) -> str:
    """The precision a model variant was written for (what the host checks it against before upload)."""
    if name in (MODEL_INT8_CPU, MODEL_INT8_CPU_AVX2, MODEL_INT8_QDQ, MODEL_INT8_QDQ_FP16):
        return "int8"
    return "fp16" if name == MODEL_FP16 else "fp32"


def needed_files(backends: Sequence[str], precision: str, int8_mode: str = "explicit",
                 cpu: Optional[Mapping[str, Any]] = None, shipped: Optional[Iterable[str]] = None) -> List[str]:
    """The model variants (and TensorRT's calibration cache) these backends will read at ``precision`` (for
    ``auto``: at every precision they have), sorted."""
    names, refused = set(), []
    shipped = None if shipped is None else list(shipped)
    for backend in backends:
        try:
            for each in (auto_precisions(backend) if precision == AUTO else [precision]):
                names.add(model_file(backend, each, int8_mode, cpu, shipped))
                if _implicit_int8(_runtime(backend), each, int8_mode):
                    names.add(CALIBRATION_CACHE)
        except ModelChoiceError as exc:  # one runtime of several unable to: the others run it (auto's race)
            refused.append(exc)
    if refused and len(refused) == len(backends):
        raise refused[0]
    return sorted(names)


def unused_files(files: Iterable[str], backends: Sequence[str], precision: str, int8_mode: str = "explicit",
                 cpu: Optional[Mapping[str, Any]] = None) -> List[str]:
    """Bundle files no candidate will read: model variants not chosen and an unneeded calibration cache.
    Files this module does not choose between (reference, baseline, calibration.json...) are kept. The other
    precisions' files are kept with an explicit precision too: the device measures them to advise."""
    files = list(files)
    needed = set(needed_files(backends, AUTO, int8_mode, cpu, files)) | set(
        needed_files(backends, precision, int8_mode, cpu, files))
    return sorted(name for name in files
                  if name in MODEL_VARIANTS + (CALIBRATION_CACHE,) and name not in needed)
