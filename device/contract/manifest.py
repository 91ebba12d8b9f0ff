"""The bundle format shared by host and device: manifest schema, checks and canonical bytes.

Everything here is pure so the host can write and the agent can check the same format without I/O.
A manifest is data only: the agent never executes or unpickles anything a bundle carries.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"

MODEL_FP32 = "model.onnx"
MODEL_INT8_QDQ = "model.int8.qdq.onnx"
MODEL_INT8_CPU = "model.int8.cpu.onnx"
MODEL_FP16 = "model.fp16.onnx"  # FP16 types written on the host (TensorRT 11 builds strongly typed)
MODEL_INT8_QDQ_FP16 = "model.int8.qdq.fp16.onnx"  # Q/DQ INT8, FP16 elsewhere, FP16 scales (opset 19)
# 7-bit weights: x86 CPUs without VNNI multiply uint8 x int8 pairs into int16 with saturation (vpmaddubsw);
# 255 x 127 x 2 overflows, 255 x 63 x 2 does not
MODEL_INT8_CPU_AVX2 = "model.int8.cpu.avx2.onnx"
# the float model QAT trained, shipped only when QAT's INT8 files won: calibration.cache then holds its learned
# ranges, and TensorRT's implicit INT8 builds it (model.onnx, the weights before QAT, would not match them)
MODEL_QAT = "model.qat.onnx"
CALIBRATION_JSON = "calibration.json"
CALIBRATION_CACHE = "calibration.cache"
REFERENCE = "reference.npz"
MODEL_BASELINE = "model.baseline.onnx"  # the unpruned FP32 model, benchmarked beside the final one
MODEL_BASELINE_FP16 = "model.baseline.fp16.onnx"  # its FP16 types, for TensorRT 11's strongly typed FP16 baseline

PRECISIONS = ("fp32", "fp16", "int8", "auto")  # auto: the agent builds each, keeps the fastest valid
BACKENDS = ("onnxruntime", "tensorrt", "openvino", "auto")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """The manifest is malformed; the message names the field."""


@dataclass(frozen=True)
class FileEntry:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The fields the agent acts on; ``raw`` keeps everything else for the report."""

    model: str
    input_name: str
    input_shape: List[int]  # C, H, W
    batch_sizes: List[int]
    precision: str
    backend: str
    files: Dict[str, FileEntry]
    build: Dict[str, Any] = field(default_factory=dict)
    benchmark: Dict[str, Any] = field(default_factory=dict)
    validation: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> FileEntry:
        if name not in self.files:
            raise ManifestError("the bundle has no {!r}; re-run `edgekit push` to rebuild it".format(name))
        return self.files[name]


def sha256_file(path: Any, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def is_safe_name(name: object) -> bool:
    """A file name that cannot escape a directory: no separators, no '..', no leading dot."""
    return isinstance(name, str) and bool(_SAFE_NAME.match(name)) and ".." not in name


def canonical_bytes(data: Dict[str, Any]) -> bytes:
    """The exact bytes that are hashed and signed: sorted keys, fixed separators."""
    return (json.dumps(data, sort_keys=True, indent=2) + "\n").encode("utf-8")


def _require(data: Dict[str, Any], key: str, kind: type, where: str = "manifest") -> Any:
    if key not in data:
        raise ManifestError("{}: missing key {!r}".format(where, key))
    value = data[key]
    if kind is int and isinstance(value, bool):
        raise ManifestError("{}: {!r} must be an integer".format(where, key))
    if not isinstance(value, kind):
        raise ManifestError("{}: {!r} must be of type {}".format(where, key, kind.__name__))
    return value


def _parse_files(entries: Any) -> Dict[str, FileEntry]:
    if not isinstance(entries, list) or not entries:
        raise ManifestError("manifest: 'files' must be a non-empty list")
    files = {}  # type: Dict[str, FileEntry]
    for index, entry in enumerate(entries):
        where = "manifest files[{}]".format(index)
        if not isinstance(entry, dict):
            raise ManifestError("{}: must be an object".format(where))
        name = _require(entry, "name", str, where)
        if not is_safe_name(name) or name in (MANIFEST, SIGNATURE):
            raise ManifestError("{}: file name {!r} is not allowed (it could escape the job directory)".format(
                where, name))
        digest = _require(entry, "sha256", str, where)
        if not _SHA256.match(digest):
            raise ManifestError("{}: sha256 {!r} is not 64 lowercase hex digits".format(where, digest))
        size = _require(entry, "size", int, where)
        if size < 0:
            raise ManifestError("{}: size must not be negative".format(where))
        if name in files:
            raise ManifestError("{}: {!r} is listed twice".format(where, name))
        files[name] = FileEntry(name, digest, size)
    return files


def parse_manifest(data: Any) -> Manifest:
    """Check a decoded manifest and return the typed view the agent uses."""
    if not isinstance(data, dict):
        raise ManifestError("manifest: must be a JSON object")
    version = _require(data, "schema_version", int)
    if version != SCHEMA_VERSION:
        raise ManifestError("manifest: schema_version {} is not supported (this agent reads {}); update the agent "
                            "with `edgekit device setup`".format(version, SCHEMA_VERSION))
    model = _require(data, "model", str)
    if not is_safe_name(model):
        raise ManifestError("manifest: model name {!r} must be letters, digits, '.', '_' or '-'".format(model))
    spec = _require(data, "input", dict)
    shape = _require(spec, "shape", list, "manifest input")
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ManifestError("manifest input: 'shape' must be three positive integers (C, H, W)")
    batches = _require(spec, "batch_sizes", list, "manifest input")
    if not batches or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batches):
        raise ManifestError("manifest input: 'batch_sizes' must be positive integers")
    target = _require(data, "target", dict)
    precision = _require(target, "precision", str, "manifest target")
    if precision not in PRECISIONS:
        raise ManifestError("manifest target: precision {!r} is not one of {}".format(precision, ", ".join(PRECISIONS)))
    backend = _require(target, "backend", str, "manifest target")
    if backend not in BACKENDS:
        raise ManifestError("manifest target: backend {!r} is not one of {}".format(backend, ", ".join(BACKENDS)))
    files = _parse_files(data.get("files"))
    return Manifest(
        model=model,
        input_name=_require(spec, "name", str, "manifest input"),
        input_shape=list(shape),
        batch_sizes=sorted(set(batches)),
        precision=precision,
        backend=backend,
        files=files,
        build=dict(target.get("build", {})),
        benchmark=dict(target.get("benchmark", {})),
        validation=dict(target.get("validation", {})),
        raw=data,
    )


def load_manifest_bytes(payload: bytes) -> Manifest:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError("manifest: not valid JSON ({})".format(exc)) from None
    return parse_manifest(data)
