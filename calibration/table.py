"""The calibration table (tensor name → amax) and its two file forms.

- ``calibration.json``: backend-neutral, human-readable: amax, observed min/max, method, image count.
- ``calibration.cache``: TensorRT's implicit-INT8 cache: a header ``TRT-<version>-EntropyCalibration2``
  then ``<tensor name>: <hex of the big-endian float32 scale>`` per line, scale = amax / 127.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

CACHE_HEADER = "TRT-{version}-EntropyCalibration2"
DEFAULT_TRT_VERSION = "8601"  # re-stamped by the agent with its own TensorRT version


@dataclass
class TensorRange:
    amax: float
    lowest: float
    highest: float


@dataclass
class CalibrationTable:
    method: str
    images: int
    ranges: dict[str, TensorRange] = field(default_factory=dict)
    percentile: float | None = None

    def amax(self, name: str) -> float:
        return self.ranges[name].amax

    def to_json(self) -> str:
        data = {"method": self.method, "images": self.images, "percentile": self.percentile,
                "tensors": {name: {"amax": r.amax, "min": r.lowest, "max": r.highest}
                            for name, r in sorted(self.ranges.items())}}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CalibrationTable:
        data = json.loads(text)
        ranges = {name: TensorRange(v["amax"], v["min"], v["max"]) for name, v in data["tensors"].items()}
        return cls(data["method"], data["images"], ranges, data.get("percentile"))

    def write(self, json_path: Path, cache_path: Path, trt_version: str = DEFAULT_TRT_VERSION) -> None:
        json_path.write_text(self.to_json())
        cache_path.write_text(trt_cache(self, trt_version))


def scale_hex(amax: float) -> str:
    """TensorRT's cache encoding: the float32 scale's bits as 8 lowercase hex digits."""
    return struct.pack(">f", amax / 127.0).hex()


def hex_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def trt_cache(table: CalibrationTable, version: str = DEFAULT_TRT_VERSION) -> str:
    lines = [CACHE_HEADER.format(version=version)]
    lines += [f"{name}: {scale_hex(r.amax)}" for name, r in sorted(table.ranges.items()) if r.amax > 0]
    return "\n".join(lines) + "\n"


def parse_trt_cache(text: str) -> tuple[str, dict[str, float]]:
    """Header and tensor → scale; names may contain ':' so split on the last one."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("not a TensorRT calibration cache (first line must start with 'TRT-')")
    scales = {}
    for line in lines[1:]:
        name, _, value = line.rpartition(":")
        scales[name.strip()] = hex_scale(value.strip())
    return lines[0], scales
