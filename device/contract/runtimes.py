"""What host and device agree about each runtime, declared once per runtime as data.

The host cannot load a backend (it has no TensorRT), yet it must know which files a runtime reads, what
``auto`` does with it, which deploy.toml keys reach it and what ``edgekit device setup`` ships for it. So
those facts live here, and code asks the functions below instead of comparing backend names. On the device
each ``Backend`` exposes its entry (``Backend.runtime``) and adds what only the device knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

AUTO = "auto"  # not a runtime: the agent measures the CPU runtimes it has and keeps the fastest
# Precision "fp16" is a runtime's reduced float precision, no calibration needed: FP16 on TensorRT; on OpenVINO
# its default inference precision (bf16 on CPUs with AVX512-BF16/AMX, f16 on ARM and GPUs, f32 elsewhere: the
# compiled model says which it ran)


@dataclass(frozen=True)
class Runtime:
    """One runtime's part of the contract; every flag answers a question some code used to ask by name."""

    name: str
    fp16: bool = False  # builds precision = "fp16"
    fp16_typed_files: bool = False  # its newest version builds strongly typed: FP16 types written on the host
    qdq_int8: bool = False  # INT8 from the explicit Q/DQ file; otherwise from the CPU INT8 files (model_files)
    implicit_int8: bool = False  # int8_mode = "implicit": the float model plus calibration.cache
    race_rank: Optional[int] = None  # a CPU runtime auto races; on a tie the lower rank wins
    auto_alone: bool = False  # the GPU runtime: where present, auto takes it without a race
    fallback: Optional[str] = None  # where a job goes when this runtime is missing and allow_fallback is set
    build_keys: Tuple[str, ...] = ()  # target.build keys it reads, set from the device's deploy.toml keys
    benchmark_keys: Tuple[str, ...] = ()  # target.benchmark keys set from the device's deploy.toml keys
    benchmark_extras: Tuple[str, ...] = ()  # target.benchmark switches its engines' benchmark takes
    cuda_python: bool = False  # CUDA memory through cuda-python: `edgekit device setup` ships its wheels
    precisions: Tuple[str, ...] = ("int8", "fp32")  # what precision = "auto" builds, validates and races on it
    # the precision a user runs the unpruned model at here without calibration: the report's baseline. It must be
    # the runtime's own default (tests/test_baseline_precision.py): TensorRT users build --fp16, OpenVINO runs
    # its default inference precision, ONNX Runtime FP32
    baseline_precision: str = "fp32"
    # a latency model (prune.target_latency_ms) can be read from its per-layer profiler on a few whole models
    # (device/jobs/latency.py): layers timed in context, where a small layer alone carries a per-call overhead and
    # misses the caches and threads a whole model runs with (ONNX Runtime at batch 1: the layer table
    # over-predicted MobileNetV2 by 25-56 %) ...
    layer_profile: bool = False
    # ... and whether it can time one layer variant at a time instead (TensorRT cannot: an engine build each)
    times_layers: bool = True
    # the channel vectors its kernels' native layouts pack (``channel_multiple``): per precision on a GPU, ...
    channel_vectors: Tuple[Tuple[str, int], ...] = ()
    # ... or the CPU's SIMD blocks (oneDNN's and MLAS's nChw16c / nChw8c layouts)
    cpu_blocked: bool = False


# In the order the agent lists them (status, `edgekit device check`).
RUNTIMES: Dict[str, Runtime] = {runtime.name: runtime for runtime in (
    Runtime("onnxruntime", race_rank=1, layer_profile=True, cpu_blocked=True),
    Runtime("openvino", fp16=True, race_rank=0, fallback="onnxruntime", build_keys=("openvino_device",),
            precisions=("int8", "fp16", "fp32"), baseline_precision="fp16", layer_profile=True, cpu_blocked=True),
    Runtime("tensorrt", fp16=True, fp16_typed_files=True, precisions=("int8", "fp16", "fp32"),
            baseline_precision="fp16", qdq_int8=True, implicit_int8=True, auto_alone=True, times_layers=False,
            fallback="onnxruntime", build_keys=("int8_mode", "workspace_mb", "dla_core", "builder_optimization_level"),
            benchmark_keys=("cuda_graph", "profile_layers"),
            benchmark_extras=("cuda_graph", "profile_layers", "cross_check"), cuda_python=True, layer_profile=True,
            channel_vectors=(("int8", 32), ("fp16", 8))),  # TensorFormat CHW32 (INT8), HWC8 (FP16)
)}


class UnknownRuntime(ValueError):
    """A name that is neither a runtime of the table nor ``auto``."""


def names() -> Tuple[str, ...]:
    """Every runtime edgekit knows, in the table's order."""
    return tuple(RUNTIMES)


def runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise UnknownRuntime("unknown backend {!r}; edgekit knows {}".format(name, ", ".join(RUNTIMES))) from None


def cpu_runtimes() -> Tuple[str, ...]:
    """The runtimes ``auto`` measures against each other, the tie-winner first."""
    racing = [r for r in RUNTIMES.values() if r.race_rank is not None]
    return tuple(r.name for r in sorted(racing, key=lambda r: r.race_rank))


def auto_alone(have: Iterable[str]) -> Optional[str]:
    """The runtime ``auto`` takes without a race when the device has it (the GPU one), else None."""
    have = set(have)
    return next((name for name, r in RUNTIMES.items() if r.auto_alone and name in have), None)


def fp16_runtimes() -> Tuple[str, ...]:
    return tuple(name for name, r in RUNTIMES.items() if r.fp16)


def baseline_precision(name: str) -> str:
    """The precision of the report's baseline on this runtime: its default, the fastest without calibration."""
    return runtime(name).baseline_precision


def auto_precisions(name: str) -> Tuple[str, ...]:
    """The precisions ``precision = "auto"`` builds on this runtime, INT8 first."""
    return runtime(name).precisions


def reads_fp16_typed_files(backend: Optional[str]) -> bool:
    """Whether the host may have to write FP16-typed ONNX for ``backend`` (TensorRT 11's strong typing)."""
    entry = RUNTIMES.get(backend or "")
    return entry is not None and entry.fp16_typed_files


def fallback_runtime(backend: str) -> Optional[str]:
    """Where a job for ``backend`` goes when its runtime is missing and deploy.toml allows fallback."""
    entry = RUNTIMES.get(backend)
    return entry.fallback if entry is not None else None


def needs_cuda_python(backend: str) -> bool:
    """Whether `edgekit device setup` ships cuda-python for a device running ``backend``."""
    entry = RUNTIMES.get(backend)
    return entry is not None and entry.cuda_python


# x86 SIMD blocks, widest first: the blocked layouts of ONNX Runtime (MLAS NCHWc) and OpenVINO (oneDNN)
CPU_BLOCKS: Tuple[Tuple[str, int], ...] = (("avx512f", 16), ("avx2", 8))


def channel_multiple(backends: Iterable[str], precisions: Iterable[str], isa: Iterable[str]) -> int:
    """The channel count a width should be a multiple of on these runtimes: their native layouts pack channels
    in vectors (TensorRT's INT8 CHW32 and FP16 HWC8; a CPU's 16- or 8-float SIMD block), a width between two
    multiples is padded to the next and costs its time, and ONNX Runtime leaves a conv outside its blocked
    layout altogether, with a reorder on each side (on an AVX-512 CPU, ResNet-20 ×4 pruned to multiples of 8
    ran no faster than with those widths rounded up to 16). 1 where nothing is known (ARM CPUs)."""
    wanted, have = set(precisions), set(isa)
    multiple = 1
    for name in backends:
        entry = runtime(name)
        sizes = [size for precision, size in entry.channel_vectors if precision in wanted]
        if entry.cpu_blocked:
            sizes += [next((size for flag, size in CPU_BLOCKS if flag in have), 1)]
        multiple = max([multiple, *sizes])
    return multiple


def _configured(backend: str) -> Tuple[Runtime, ...]:
    """The runtimes a device's deploy.toml keys reach: the one named; for auto, the CPU runtimes it races
    (on a device with TensorRT, auto builds with TensorRT's defaults)."""
    if backend == AUTO:
        return tuple(RUNTIMES[name] for name in cpu_runtimes())
    return (runtime(backend),)


def build_keys(backend: str) -> Tuple[str, ...]:
    """The device's deploy.toml keys the manifest's target.build carries (when set) for ``backend``."""
    return tuple(key for entry in _configured(backend) for key in entry.build_keys)


def benchmark_keys(backend: str) -> Tuple[str, ...]:
    """The device's deploy.toml keys the manifest's target.benchmark carries for ``backend``."""
    return tuple(key for entry in _configured(backend) for key in entry.benchmark_keys)


def layer_profile(name: str) -> bool:
    """Whether the latency model on ``name`` can come from its per-layer profile of whole models."""
    entry = RUNTIMES.get(name)
    return entry is not None and entry.layer_profile


def profiles_latency(names: Sequence[str], method: str) -> bool:
    """Whether a latency job over ``names`` profiles whole models: where one of them cannot time layer variants
    (TensorRT), or where ``prune.latency_model = "profile"`` asks it and every one has a profiler."""
    entries = [RUNTIMES[name] for name in names if name in RUNTIMES]
    return any(not entry.times_layers for entry in entries) or (
        method == "profile" and all(entry.layer_profile for entry in entries))
