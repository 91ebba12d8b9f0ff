"""What the device looked like while it was measured, so numbers can be trusted or explained.

Every source is optional: a value that cannot be read is reported as missing, never invented.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any, Dict, Optional


def read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip().strip("\x00")
    except OSError:
        return None


def thermal_zones(root: Path = Path("/sys/class/thermal")) -> Dict[str, float]:
    """Zone type → °C from sysfs (millidegrees there)."""
    temps = {}
    if not root.is_dir():
        return temps
    for zone in sorted(root.glob("thermal_zone*")):
        kind = read_text(zone / "type")
        raw = read_text(zone / "temp")
        if kind and raw and raw.lstrip("-").isdigit():
            temps[kind] = int(raw) / 1000.0
    return temps


def snapshot() -> Dict[str, Any]:
    """Load, temperatures and (on a Jetson) clocks, throttling and rail power at one moment."""
    from .backends.tensorrt.jetson import jetson_state

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    state = {"loadavg_1m": load[0] if load else None, "temperatures_c": thermal_zones() or None}
    if read_text(Path("/proc/device-tree/model")):
        state["jetson"] = jetson_state()
    return state


def sampler() -> Any:
    """A context manager sampling the device while a benchmark runs (tegrastats on a Jetson, whichever runtime
    is measured: power is the module's); ``result()`` says so where there is nothing to sample."""
    from .backends.tensorrt.jetson import TegrastatsSampler

    return TegrastatsSampler()


def describe_host() -> Dict[str, Any]:
    """Static facts: what machine ran the job."""
    from .backends.tensorrt.jetson import jetson_facts

    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "jetson": jetson_facts(),
    }
