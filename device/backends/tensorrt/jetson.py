"""Jetson facts and live readings: model, L4T/JetPack, nvpmodel, clocks, power, throttling.

Everything reads files or runs NVIDIA's tools when they exist; a value that cannot be read is
reported as missing (None, and named in ``missing``), never guessed. ``root`` lets tests point the
readers at fixture trees.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

# L4T release → JetPack (NVIDIA's release notes); a release not listed is reported as unknown.
JETPACK = {
    "32.1": "4.2", "32.2": "4.2.x", "32.3": "4.3", "32.4": "4.4.x", "32.5": "4.5.x", "32.6": "4.6", "32.7": "4.6.x",
    "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3",
    "35.6": "5.1.4/5.1.5", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2.x", "38.2": "7.0", "39.2": "7.2",
}
ABSENT_SENSOR_C = -256.0  # tegrastats prints -256C for sensors that do not exist on the module
_TEMP = re.compile(r"\b([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
# Every "NAME now/avg" pair is a rail, whatever its name: AGX Xavier's are GPU, CPU, SOC, CV, VDDRQ, SYS5V;
# RAM/SWAP/IRAM pairs end in a unit (MB, kB) and are not rails.
_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
# "NAME load%", "NAME load%@MHz", "NAME load%@[MHz,...]" (one clock per GPC), or a bare clock "NAME MHz"
# (JetPack 5 prints VIC_FREQ so on Orin).
_LOAD_FREQ = re.compile(r"\b(GR3D_FREQ|GR3D2_FREQ|EMC_FREQ|VIC_FREQ|NVENC_FREQ|NVDEC_FREQ)"
                        r"\s+(?:(\d+)%(?:@\[?([\d,]+)\]?)?|(\d+)(?=\s|$))")
# Rails that measure the whole module's input (Thor's is VIN). AGX Orin's VIN_SYS_5V0 is only the 5 V I/O
# rail and AGX Xavier reports none, so a line without one of these has no total, and none is reported.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN")


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(errors="replace").strip().strip("\x00").strip()
    except OSError:
        return None


# -- tegrastats (pure) ------------------------------------------------------------------------
def parse_tegrastats(line: str) -> Dict[str, Any]:
    """One tegrastats line (JetPack 4 to 7 formats) → RAM, CPU, GPU/EMC load and clock, temperatures,
    power rails (mW, current and average). Fields the line does not carry are absent."""
    result: Dict[str, Any] = {}
    ram = re.search(r"\bRAM (\d+)/(\d+)MB", line)
    if ram:
        result["ram_mb"] = {"used": int(ram.group(1)), "total": int(ram.group(2))}
    cpu = re.search(r"\bCPU \[([^\]]*)\]", line)
    if cpu:
        cores = []
        for item in cpu.group(1).split(","):
            match = re.match(r"\s*(\d+)%@(\d+)", item)
            cores.append({"load": int(match.group(1)), "mhz": int(match.group(2))} if match else None)
        result["cpu"] = cores
    for name, load, freqs, clock in _LOAD_FREQ.findall(line):
        key = name.lower().replace("_freq", "")
        entry: Dict[str, Any] = {"load_percent": int(load)} if load else {"mhz": int(clock)}
        if freqs:
            values = [int(f) for f in freqs.split(",") if f]
            entry["mhz"] = max(values) if values else None
        result[key] = entry
    temps = {}
    for name, value in _TEMP.findall(line):
        celsius = float(value)
        if celsius > ABSENT_SENSOR_C:
            temps[name.lower()] = celsius
    if temps:
        result["temperatures_c"] = temps
    rails = {name: {"mw": int(now), "avg_mw": int(avg)} for name, now, avg in _RAIL.findall(line)
             if not name.startswith("NC")}
    if rails:
        result["power_mw"] = rails
        total = next((rails[r]["mw"] for r in _INPUT_RAILS if r in rails), None)
        result["input_power_mw"] = total
    return result


def summarize_power(samples: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Mean per rail over the samples taken while the benchmark ran."""
    rails: Dict[str, List[int]] = {}
    for sample in samples:
        for name, reading in sample.get("power_mw", {}).items():
            rails.setdefault(name, []).append(reading["mw"])
    if not rails:
        return None
    means = {name: sum(values) / len(values) for name, values in rails.items()}
    total = next((means[r] for r in _INPUT_RAILS if r in means), None)
    return {"rails_mean_mw": means, "input_mean_mw": total, "samples": len(samples)}


# -- static facts -----------------------------------------------------------------------------
def l4t_release(text: Optional[str]) -> Optional[str]:
    """'# R35 (release), REVISION: 4.1, ...' → '35.4.1'."""
    if not text:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return "{}.{}".format(match.group(1), match.group(2)) if match else None


def jetpack_for(l4t: Optional[str]) -> Optional[str]:
    if not l4t:
        return None
    major_minor = ".".join(l4t.split(".")[:2])
    return JETPACK.get(major_minor)


def nvpmodel_mode(output: Optional[str]) -> Optional[str]:
    """`nvpmodel -q` prints 'NV Power Mode: MAXN' then the mode number."""
    if not output:
        return None
    match = re.search(r"NV Power Mode:\s*(\S+)", output)
    return match.group(1) if match else None


def devfreq_gpu(root: Path) -> Optional[Dict[str, Any]]:
    """GPU clock (MHz) from devfreq: current, min and max; min == max means clocks are locked."""
    base = root / "sys/class/devfreq"
    if not base.is_dir():
        return None
    for entry in sorted(base.iterdir()):
        if not any(tag in entry.name for tag in ("gpu", "gv11b", "ga10b", "gp10b", "gb10b")):
            continue
        values = {key: _read(entry / "{}_freq".format(key)) for key in ("cur", "min", "max")}
        if all(v and v.isdigit() for v in values.values()):
            mhz = {k: int(v) / 1e6 for k, v in values.items()}  # type: ignore[arg-type]
            return {"name": entry.name, "cur_mhz": mhz["cur"], "min_mhz": mhz["min"], "max_mhz": mhz["max"]}
    return None


def clocks_locked(root: Path, gpu: Optional[Dict[str, Any]]) -> Optional[bool]:
    """jetson_clocks pins CPU and GPU minimum frequencies to their maximum; None when unreadable."""
    cpu = root / "sys/devices/system/cpu/cpu0/cpufreq"
    low, high = _read(cpu / "scaling_min_freq"), _read(cpu / "scaling_max_freq")
    if low is None or high is None or gpu is None:
        return None
    return low == high and gpu["min_mhz"] == gpu["max_mhz"]


def thermal_throttling(root: Path) -> Optional[bool]:
    """True when a thermal zone is at or above its first passive trip point (the kernel slows clocks)."""
    base = root / "sys/class/thermal"
    if not base.is_dir():
        return None
    seen = False
    for zone in base.glob("thermal_zone*"):
        temp = _read(zone / "temp")
        if not temp or not temp.lstrip("-").isdigit():
            continue
        for trip in zone.glob("trip_point_*_type"):
            if _read(trip) != "passive":
                continue
            limit = _read(trip.with_name(trip.name.replace("_type", "_temp")))
            if limit and limit.lstrip("-").isdigit():
                seen = True
                if int(temp) >= int(limit):
                    return True
    return False if seen else None


def hwmon_power(root: Path) -> Optional[Dict[str, float]]:
    """INA3221 rails from hwmon (JetPack 6+): label → mW (V × I)."""
    rails = {}
    for label in root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"):
        index = label.name[2:-len("_label")]
        name = _read(label)
        volts = _read(label.with_name("in{}_input".format(index)))
        amps = _read(label.with_name("curr{}_input".format(index)))
        if name and volts and amps and volts.isdigit() and amps.isdigit():
            rails[name] = int(volts) * int(amps) / 1000.0
    return rails or None


def jetson_facts(root: Path = Path("/")) -> Dict[str, Any]:
    """Static description of a Jetson, with ``missing`` naming what could not be read."""
    model = _read(root / "proc/device-tree/model")
    if not model or "jetson" not in model.lower():
        return {"jetson": False}
    l4t = l4t_release(_read(root / "etc/nv_tegra_release"))
    facts: Dict[str, Any] = {"jetson": True, "model": model, "l4t": l4t, "jetpack": jetpack_for(l4t)}
    if shutil.which("nvpmodel") and root == Path("/"):
        try:
            output = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            output = None
        facts["nvpmodel"] = nvpmodel_mode(output)
    else:
        facts["nvpmodel"] = None
    facts["missing"] = [key for key in ("l4t", "jetpack", "nvpmodel") if facts.get(key) is None]
    return facts


def jetson_state(root: Path = Path("/")) -> Dict[str, Any]:
    """Readings that change: clocks, lock state, throttling, rail power."""
    gpu = devfreq_gpu(root)
    state = {"gpu_clock": gpu, "clocks_locked": clocks_locked(root, gpu), "throttling": thermal_throttling(root),
             "power_mw": hwmon_power(root)}
    state["missing"] = [key for key, value in state.items() if value is None]
    return state


# -- sampling while the benchmark runs --------------------------------------------------------
class TegrastatsSampler:
    """Runs `tegrastats --interval MS` in the background and parses its lines; nothing if it is absent."""

    def __init__(self, interval_ms: int = 200) -> None:
        self.interval_ms = interval_ms
        self.samples: List[Dict[str, Any]] = []
        self.process: Optional[subprocess.Popen] = None
        self.thread: Optional[threading.Thread] = None
        self.windowed = False
        self.active = threading.Event()

    @contextmanager
    def window(self) -> Iterator[None]:
        """Keep only the lines read while inside a window (the deployed engine's timed rounds): power
        "during" must not mix in the baseline, trtexec or profiling runs around them."""
        self.windowed = True
        self.active.set()
        try:
            yield
        finally:
            self.active.clear()

    def __enter__(self) -> TegrastatsSampler:
        binary = shutil.which("tegrastats")
        if binary:
            try:
                self.process = subprocess.Popen([binary, "--interval", str(self.interval_ms)],
                                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                self.process = None
        if self.process is not None:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            parsed = parse_tegrastats(line)
            if parsed and (not self.windowed or self.active.is_set()):
                self.samples.append(parsed)

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def result(self) -> Dict[str, Any]:
        if self.process is None:
            return {"source": None, "missing": "tegrastats not available"}
        return {"source": "tegrastats", "power": summarize_power(self.samples),
                "last": self.samples[-1] if self.samples else None,
                "window": "the deployed engine's timed rounds" if self.windowed else "the whole benchmark phase"}

