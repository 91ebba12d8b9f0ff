"""Cross-check our TensorRT timings with NVIDIA's trtexec on the same engine file and input shape.

``benchmark.cross_check = true`` runs ``trtexec --loadEngine`` where it exists (JetPack:
/usr/src/tensorrt/bin/trtexec) with our warm-up, duration, iterations, CUDA-graph and transfer
settings spelled for that TensorRT (11 changed the defaults: transfers off, CUDA graph on), parses its
"Performance summary" and puts its GPU-compute and latency medians next to ours, flagging a difference
above 5 %. Both sides use the same definitions (see gpu_timing.DEFINITIONS).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from ...benchmark import Plan

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
TOLERANCE_PERCENT = 5.0
TIMEOUT_S = 600
_METRICS = {"Latency": "latency_ms", "Enqueue Time": "enqueue_ms", "H2D Latency": "h2d_ms",
            "GPU Compute Time": "gpu_compute_ms", "D2H Latency": "d2h_ms"}
_LINE = re.compile(r"(Latency|Enqueue Time|H2D Latency|GPU Compute Time|D2H Latency): min = ([\d.e+-]+) ms, "
                   r"max = ([\d.e+-]+) ms, mean = ([\d.e+-]+) ms, median = ([\d.e+-]+) ms(.*)$")
_PERCENTILE = re.compile(r"percentile\(([\d.]+)%\) = ([\d.e+-]+) ms")


def find_trtexec(search: Sequence[str] = (JETPACK_TRTEXEC,)) -> Optional[str]:
    """trtexec on PATH, else JetPack's location."""
    found = shutil.which("trtexec")
    if found:
        return found
    return next((path for path in search if os.path.isfile(path) and os.access(path, os.X_OK)), None)


def command(trtexec: str, engine: Path, input_name: str, shape: Sequence[int], plan: Plan, cuda_graph: bool,
            dla_core: Optional[int], major: int) -> list:
    """The trtexec command measuring what we measured (transfers included, same graph setting)."""
    args = [trtexec, "--loadEngine={}".format(engine), "--shapes={}:{}".format(input_name, "x".join(map(str, shape))),
            "--warmUp={}".format(int(plan.warmup_s * 1000)),
            "--duration={}".format(max(1, int(round(plan.duration_s)))), "--iterations={}".format(plan.min_iterations)]
    if major >= 11:  # 11: transfers off and CUDA graph on by default
        args += ["--includeDataTransfers"] + ([] if cuda_graph else ["--noCudaGraph"])
    elif cuda_graph:  # 8.5-10: transfers on and CUDA graph off by default
        args.append("--useCudaGraph")
    if dla_core is not None:
        args.append("--useDLACore={}".format(dla_core))
    return args


def parse_summary(text: str) -> Dict[str, Any]:
    """trtexec's "=== Performance summary ===" lines → {metric: {min, max, mean, median, p<N>}, qps, ...}."""
    result: Dict[str, Any] = {}
    for raw in text.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw.strip())  # "[05/27/2023-12:05:31] [I] " prefixes
        match = _LINE.match(line)
        if match:
            stats = {"min": float(match.group(2)), "max": float(match.group(3)), "mean": float(match.group(4)),
                     "median": float(match.group(5))}
            for pct, value in _PERCENTILE.findall(match.group(6)):
                stats["p{:g}".format(float(pct))] = float(value)
            result[_METRICS[match.group(1)]] = stats
            continue
        qps = re.match(r"Throughput: ([\d.e+-]+) qps", line)
        if qps:
            result["qps"] = float(qps.group(1))
        wall = re.match(r"Total Host Walltime: ([\d.e+-]+) s", line)
        if wall:
            result["wall_s"] = float(wall.group(1))
    if "gpu_compute_ms" not in result or "latency_ms" not in result:
        raise ValueError("no trtexec performance summary found")
    return result


def compare(ours: Dict[str, Any], theirs: Dict[str, Any], tolerance: float = TOLERANCE_PERCENT) -> Dict[str, Any]:
    """Medians side by side, the difference in % of trtexec's, and whether it exceeds ``tolerance``."""
    rows = {}
    flagged = []
    for key in ("gpu_compute_ms", "latency_ms"):
        mine, ref = ours[key]["median"], theirs[key]["median"]
        diff = (mine - ref) / ref * 100.0 if ref > 0 else float("inf")
        rows[key] = {"edgekit_median": mine, "trtexec_median": ref, "difference_percent": diff}
        if abs(diff) > tolerance:
            flagged.append("{} median {:.4f} ms vs trtexec {:.4f} ms ({:+.1f}%)".format(key, mine, ref, diff))
    return {"medians": rows, "tolerance_percent": tolerance, "flagged": flagged,
            "agrees": not flagged}


def cross_check(engine: Path, input_name: str, shape: Sequence[int], plan: Plan, cuda_graph: bool,
                dla_core: Optional[int], version: Any, ours: Dict[str, Any]) -> Dict[str, Any]:
    """Run trtexec and compare; where it is missing or fails, say so (never a made-up figure)."""
    trtexec = find_trtexec()
    if trtexec is None:
        return {"ran": False, "reason": "trtexec not found (on PATH or {})".format(JETPACK_TRTEXEC)}
    args = command(trtexec, engine, input_name, shape, plan, cuda_graph, dla_core, version.major)
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
        theirs = parse_summary(done.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return {"ran": False, "command": " ".join(args), "reason": "trtexec failed: {}".format(exc)}
    return dict(compare(ours, theirs), ran=True, command=" ".join(args), trtexec=theirs)
