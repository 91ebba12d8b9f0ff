"""What to ask TensorRT for, decided without TensorRT: pure functions, tested everywhere.

The TensorRT backend turns a ``BuildPlan`` into builder calls; everything that depends on the
TensorRT version (implicit INT8 removed in 11, progress monitor from 10, optimisation level from 8.6,
the explicit-batch flag before 10) and on the device (DLA cores) is decided here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .manifest import MODEL_FP32, MODEL_INT8_QDQ

CACHE_ALGORITHM = "EntropyCalibration2"


class PlanError(ValueError):
    """The requested build cannot be done with this TensorRT or on this device."""


@dataclass(frozen=True)
class TrtVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
        if not match:
            raise ValueError("not a TensorRT version: {!r}".format(text))
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))

    def __str__(self) -> str:
        return "{}.{}.{}".format(self.major, self.minor, self.patch)

    @property
    def cache_stamp(self) -> str:
        """NV_TENSORRT_VERSION as the calibration cache header writes it: 8.6.1 → 8601, 10.3.0 → 100300."""
        if self.major >= 10:
            return str(self.major * 10000 + self.minor * 100 + self.patch)
        return str(self.major * 1000 + self.minor * 100 + self.patch)

    @property
    def implicit_int8(self) -> bool:
        return self.major < 11

    @property
    def implicit_int8_deprecated(self) -> bool:
        return (self.major, self.minor) >= (10, 1)

    @property
    def progress_monitor(self) -> bool:
        return self.major >= 10

    @property
    def optimization_level(self) -> bool:
        return (self.major, self.minor) >= (8, 6)

    @property
    def explicit_batch_flag(self) -> bool:
        """TensorRT < 10 needs EXPLICIT_BATCH to parse ONNX; 10 made it the only mode."""
        return self.major < 10


@dataclass(frozen=True)
class BuildPlan:
    precision: str
    model_file: str
    flags: Tuple[str, ...]
    workspace_bytes: int
    profile: Tuple[str, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]
    optimization_level: Optional[int] = None
    dla_core: Optional[int] = None
    int8_mode: Optional[str] = None
    use_calibration_cache: bool = False
    explicit_batch_flag: bool = True
    progress_monitor: bool = False
    warnings: Tuple[str, ...] = field(default_factory=tuple)


def profile_shapes(name: str, chw: Sequence[int], batch_sizes: Sequence[int]
                   ) -> Tuple[str, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """One optimisation profile: min = smallest batch, opt = max = largest (tuned for throughput)."""
    low, high = min(batch_sizes), max(batch_sizes)
    dims = tuple(int(d) for d in chw)
    return name, (low,) + dims, (high,) + dims, (high,) + dims


def plan_build(options: Mapping[str, Any], version: TrtVersion, dla_cores: int = 0) -> BuildPlan:
    """Translate the manifest's build options into builder settings for this TensorRT and device."""
    precision = options.get("precision", "fp32")
    warnings: List[str] = []
    flags: List[str] = []
    int8_mode = None
    model_file = MODEL_FP32
    use_cache = False
    if precision == "fp16":
        flags.append("FP16")
    elif precision == "int8":
        int8_mode = options.get("int8_mode", "explicit")
        if int8_mode == "explicit":
            model_file = MODEL_INT8_QDQ
        elif int8_mode == "implicit":
            if not version.implicit_int8:
                raise PlanError("TensorRT {} has no implicit INT8 (removed in 11); use int8_mode = \"explicit\""
                                .format(version))
            if version.implicit_int8_deprecated:
                warnings.append("implicit INT8 is deprecated since TensorRT 10.1; explicit Q/DQ is the default")
            use_cache = True
        else:
            raise PlanError("int8_mode must be \"explicit\" or \"implicit\", not {!r}".format(int8_mode))
        flags.append("INT8")
        if options.get("int8_fp16_fallback", True):
            flags.append("FP16")  # layers left unquantised run in FP16 rather than FP32
    elif precision != "fp32":
        raise PlanError("precision must be fp32, fp16 or int8, not {!r}".format(precision))
    dla_core = options.get("dla_core")
    if dla_core is not None:
        if dla_cores == 0:
            raise PlanError("dla_core = {} requested but this device has no DLA cores".format(dla_core))
        if not 0 <= int(dla_core) < dla_cores:
            raise PlanError("dla_core = {} but this device has DLA cores 0..{}".format(dla_core, dla_cores - 1))
        if precision == "fp32":
            raise PlanError("DLA runs FP16 or INT8 only; set precision = \"fp16\" or \"int8\"")
        flags.append("GPU_FALLBACK")
    level = options.get("builder_optimization_level")
    if level is not None and not version.optimization_level:
        warnings.append("builder_optimization_level needs TensorRT 8.6+; ignored on {}".format(version))
        level = None
    if level is not None and not 0 <= int(level) <= 5:
        raise PlanError("builder_optimization_level must be 0..5, not {}".format(level))
    shape = options.get("input_shape")
    if not shape:
        raise PlanError("build options lack the input shape")
    return BuildPlan(
        precision=precision, model_file=model_file, flags=tuple(flags),
        workspace_bytes=int(options.get("workspace_mb", 1024)) * (1 << 20),
        profile=profile_shapes(options.get("input_name", "input"), shape, options.get("batch_sizes", [1])),
        optimization_level=None if level is None else int(level),
        dla_core=None if dla_core is None else int(dla_core), int8_mode=int8_mode, use_calibration_cache=use_cache,
        explicit_batch_flag=version.explicit_batch_flag, progress_monitor=version.progress_monitor,
        warnings=tuple(warnings))


def restamp_cache(text: str, version: TrtVersion) -> str:
    """Replace the cache header with this device's TensorRT version (the scales do not change)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise PlanError("calibration.cache has no TRT-<version>-<algorithm> header")
    lines[0] = "TRT-{}-{}".format(version.cache_stamp, CACHE_ALGORITHM)
    return "\n".join(lines) + "\n"


def describe_parser_error(index: int, description: str, node: int, graph: Optional[Sequence[Sequence[str]]],
                          node_name: str = "", node_op: str = "") -> str:
    """'node 12 (/layer1/Conv, op Conv): <what TensorRT said>' from whatever this version reports."""
    if not node_name and graph is not None and 0 <= node < len(graph):
        node_name, node_op = graph[node][0], graph[node][1]
    where = "node {}".format(node) if node >= 0 else "the model"
    if node_name:
        where += " ({}{})".format(node_name, ", op " + node_op if node_op else "")
    return "{}: {}".format(where, description.strip())


def engine_identity(version: TrtVersion, device_name: str, compute_capability: Tuple[int, int],
                    dla_core: Optional[int], cuda_runtime: Optional[int]) -> Dict[str, Any]:
    """What makes an engine unusable elsewhere: goes into the engine cache key."""
    return {"backend": "tensorrt", "version": str(version), "device": device_name,
            "compute_capability": "{}.{}".format(*compute_capability), "dla_core": dla_core,
            "cuda_runtime": cuda_runtime}
