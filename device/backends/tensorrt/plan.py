"""What to ask TensorRT for, decided without TensorRT: pure functions, tested everywhere.

The TensorRT backend turns a ``BuildPlan`` into builder calls; everything that depends on the
TensorRT version (strong typing and no FP16/INT8 flags from 11, implicit INT8 removed in 11, progress
monitor from 10, optimisation level from 8.6, the explicit-batch flag before 10) and on the device
(DLA cores and their rules) is decided here.

Precision is the same on every version: TensorRT 11 builds only strongly typed networks (NVIDIA's 10.x →
11.x migration guide: BuilderFlag.FP16/INT8, calibrators and weak typing are gone), so the types must be
in the ONNX. The host writes ``model.fp16.onnx`` (FP16 everywhere, float32 I/O) and
``model.int8.qdq.fp16.onnx`` (Q/DQ INT8, FP16 elsewhere); 8.5–10 build the FP16 file with the FP16 flag
and the FP32 Q/DQ file with INT8+FP16, which allows the same types (their parsers stop at opset 17/18,
below the FP16-scale Q/DQ file's opset 19).

FP32 is strict: TensorRT ≥ 7.1 enables TF32 by default (BuilderFlag.TF32, set in every new builder config), so
an FP32 build on Ampere or newer runs its convolutions and matrix products in TF32 (10-bit mantissa) unless the
flag is cleared. ``precision = "fp32"`` (the report's strict FP32 column, auto's FP32 candidate) clears it on
every version (11 keeps the flag); FP16 and INT8 builds keep TensorRT's defaults, as ``trtexec --fp16`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ...contract.manifest import MODEL_FP16, MODEL_FP32, MODEL_INT8_QDQ, MODEL_INT8_QDQ_FP16
from ...contract.model_files import model_file as choose_model_file

CACHE_ALGORITHM = "EntropyCalibration2"
STRICT_FP32_CLEARS = ("TF32",)  # on by default since TensorRT 7.1: an FP32 build would run TF32 on Ampere+


class PlanError(ValueError):
    """The requested build cannot be done with this TensorRT or on this device."""


@dataclass(frozen=True)
class TrtVersion:
    major: int
    minor: int
    patch: int
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
        if not match:
            raise ValueError("not a TensorRT version: {!r}".format(text))
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3) or 0), int(match.group(4) or 0))

    def __str__(self) -> str:
        return "{}.{}.{}".format(self.major, self.minor, self.patch)

    def with_build(self, package_version: Optional[str]) -> TrtVersion:
        """This version with the build number a package version carries ('10.3.0.30-1+cuda12.5', JetPack's
        libnvinfer package), when it is this release and the bindings' ``__version__`` had none (the 10.3.0
        wheel reports '10.3.0')."""
        if self.build or not package_version:
            return self
        try:
            other = TrtVersion.parse(package_version)
        except ValueError:
            return self
        same = (other.major, other.minor, other.patch) == (self.major, self.minor, self.patch)
        return TrtVersion(self.major, self.minor, self.patch, other.build) if same and other.build else self

    @property
    def full(self) -> str:
        """With the build number (10.3.0.30): engines are not portable across builds."""
        return "{}.{}".format(self, self.build) if self.build else str(self)

    @property
    def cache_stamp(self) -> str:
        """NV_TENSORRT_VERSION as the calibration cache header writes it: 8.6.1 → 8601, 10.3.0 → 100300."""
        if self.major >= 10:
            return str(self.major * 10000 + self.minor * 100 + self.patch)
        return str(self.major * 1000 + self.minor * 100 + self.patch)

    @property
    def strongly_typed(self) -> bool:
        """11 builds strongly typed networks only: types come from the ONNX, no FP16/INT8 builder flags."""
        return self.major >= 11

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
    network_flags: Tuple[str, ...] = ()
    progress_monitor: bool = False
    strongly_typed: bool = False
    warnings: Tuple[str, ...] = field(default_factory=tuple)
    cleared_flags: Tuple[str, ...] = ()  # builder flags on by default that this build clears (TF32 for FP32)

    @property
    def min_batch(self) -> int:
        return int(self.profile[1][0])

    @property
    def max_batch(self) -> int:
        return int(self.profile[3][0])


def profile_shapes(name: str, chw: Sequence[int], batch_sizes: Sequence[int]
                   ) -> Tuple[str, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """One optimisation profile: min = smallest batch, opt = max = largest (tuned for throughput)."""
    low, high = min(batch_sizes), max(batch_sizes)
    dims = tuple(int(d) for d in chw)
    return name, (low,) + dims, (high,) + dims, (high,) + dims


def _typed_file(wanted: str, fallback: str, version: TrtVersion, files: Sequence[str]) -> str:
    """The host-typed ONNX when shipped; without it 8.5–10 use flags on the float file, 11 cannot."""
    if wanted in files or not files:
        return wanted
    if version.strongly_typed:
        raise PlanError("TensorRT {} builds strongly typed networks and needs {} in the bundle; push again with "
                        "this edgekit (the host writes it for TensorRT devices)".format(version, wanted))
    return fallback


def _precision(options: Mapping[str, Any], version: TrtVersion, files: Sequence[str]
               ) -> Tuple[str, List[str], Optional[str], bool, List[str]]:
    """(model file, builder flags, int8 mode, use cache, warnings) for the requested precision."""
    precision = options.get("precision", "fp32")
    typed = version.strongly_typed
    if precision == "fp32":
        return choose_model_file("tensorrt", precision), [], None, False, []
    if precision == "fp16":
        model = MODEL_FP16 if typed else (MODEL_FP16 if MODEL_FP16 in files else MODEL_FP32)
        return _typed_file(model, MODEL_FP32, version, files), [] if typed else ["FP16"], None, False, []
    if precision != "int8":
        raise PlanError("precision must be fp32, fp16 or int8, not {!r}".format(precision))
    int8_mode = options.get("int8_mode", "explicit")
    fp16_rest = bool(options.get("int8_fp16_fallback", True))
    warnings: List[str] = []
    if int8_mode == "implicit":
        if not version.implicit_int8:
            raise PlanError("TensorRT {} has no implicit INT8 (removed in 11); use int8_mode = \"explicit\""
                            .format(version))
        if version.implicit_int8_deprecated:
            warnings.append("implicit INT8 is deprecated since TensorRT 10.1; explicit Q/DQ is the default")
        model = choose_model_file("tensorrt", precision, int8_mode, None, files or None)
        return model, ["INT8"] + (["FP16"] if fp16_rest else []), int8_mode, True, warnings
    if int8_mode != "explicit":
        raise PlanError("int8_mode must be \"explicit\" or \"implicit\", not {!r}".format(int8_mode))
    if typed:
        model = _typed_file(MODEL_INT8_QDQ_FP16, MODEL_INT8_QDQ, version, files) if fp16_rest else MODEL_INT8_QDQ
        return model, [], int8_mode, False, warnings
    return choose_model_file("tensorrt", precision, int8_mode), ["INT8"] + (["FP16"] if fp16_rest else []), \
        int8_mode, False, warnings


def check_dla(options: Mapping[str, Any], dla_cores: int, batch_sizes: Sequence[int]) -> Optional[int]:
    """DLA rules checked before building (NVIDIA's DLA guide): FP16/INT8 only, one static shape per engine.

    With min ≠ max in the profile DLA cannot run the network and TensorRT silently moves every layer to
    the GPU, so a report would say DLA for a GPU engine: refuse instead.
    """
    dla_core = options.get("dla_core")
    if dla_core is None:
        return None
    if dla_cores == 0:
        raise PlanError("dla_core = {} requested but this device has no DLA cores".format(dla_core))
    if not 0 <= int(dla_core) < dla_cores:
        raise PlanError("dla_core = {} but this device has DLA cores 0..{}".format(dla_core, dla_cores - 1))
    if options.get("precision", "fp32") == "fp32":
        raise PlanError("DLA runs FP16 or INT8 only; set precision = \"fp16\" or \"int8\"")
    if min(batch_sizes) != max(batch_sizes):
        raise PlanError("DLA runs static shapes only, but batch_sizes = {} needs a dynamic profile; use one batch "
                        "size for a DLA build (or drop dla_core)".format(sorted(batch_sizes)))
    return int(dla_core)


def plan_build(options: Mapping[str, Any], version: TrtVersion, dla_cores: int = 0,
               files: Sequence[str] = ()) -> BuildPlan:
    """Translate the manifest's build options into builder settings for this TensorRT and device.

    ``files`` are the bundle's file names (to use host-typed ONNX where shipped); empty means "assume all".
    """
    precision = options.get("precision", "fp32")
    model_file, flags, int8_mode, use_cache, warnings = _precision(options, version, files)
    batch_sizes = options.get("batch_sizes", [1])
    dla_core = check_dla(options, dla_cores, batch_sizes)
    if dla_core is not None:
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
        profile=profile_shapes(options.get("input_name", "input"), shape, batch_sizes),
        optimization_level=None if level is None else int(level), dla_core=dla_core, int8_mode=int8_mode,
        use_calibration_cache=use_cache, network_flags=("EXPLICIT_BATCH",) if version.explicit_batch_flag else (),
        progress_monitor=version.progress_monitor, strongly_typed=version.strongly_typed, warnings=tuple(warnings),
        cleared_flags=STRICT_FP32_CLEARS if precision == "fp32" else ())


def dla_placement(layers: Sequence[Tuple[str, bool]], dla_core: int) -> Dict[str, Any]:
    """Where each layer runs, from the builder's ``can_run_on_DLA`` answer per network layer."""
    gpu = [name for name, on_dla in layers if not on_dla]
    return {"dla_core": dla_core, "layers": len(layers), "dla_layers": len(layers) - len(gpu),
            "gpu_fallback_layers": gpu,
            "summary": "DLA core {}: {} of {} layers; {} on the GPU".format(
                dla_core, len(layers) - len(gpu), len(layers), len(gpu))}


def run_chunks(count: int, low: int, high: int) -> List[Tuple[int, int, int]]:
    """(start, stop, padded size) chunks covering ``count`` samples inside the profile [low, high].

    A chunk smaller than the profile's minimum is padded up to it (the extra rows are dropped again):
    TensorRT rejects a shape below the minimum.
    """
    chunks = []
    for start in range(0, count, high):
        stop = min(start + high, count)
        chunks.append((start, stop, max(stop - start, low)))
    return chunks


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
                    dla_core: Optional[int], cuda_driver: Optional[int], l4t: Optional[str] = None,
                    library: Optional[str] = None) -> Dict[str, Any]:
    """What makes an engine unusable elsewhere: goes into the engine cache key.

    TensorRT's full version with its build number (engines are tied to the exact build), the GPU, and
    the CUDA *driver* and L4T release the device runs — not the version of the Python binding's bundled
    runtime, which says nothing about the libraries TensorRT links. Where no build number can be found,
    ``library`` (the loaded libnvinfer's path, size and modification time) stands in for it. ``fp32_clears``: an
    FP32 engine cached before FP32 builds cleared TF32 is not strict FP32, so it must not be reused.
    """
    identity = {"backend": "tensorrt", "version": version.full, "device": device_name,
                "compute_capability": "{}.{}".format(*compute_capability), "dla_core": dla_core,
                "cuda_driver": cuda_driver, "l4t": l4t, "fp32_clears": list(STRICT_FP32_CLEARS)}
    if not version.build:
        identity["library"] = library
    return identity
