"""The device's CPU: its name and the instruction-set features that decide how INT8 may run on it.

INT8 on a CPU is not one thing. x86 without VNNI multiplies uint8 × int8 pairs with ``vpmaddubsw``,
which saturates its int16 sums (2 × 255 × 127 > 32767): ONNX Runtime's U8S8 kernels can then give wrong
answers, while 7-bit weights (2 × 255 × 63 < 32767) cannot overflow. VNNI (``avx512_vnni``,
``avx_vnni``, AMX) and ARM's widening multiplies accumulate in int32 and never saturate. The device reports
these facts (``describe_cpu``) and the choice of INT8 file is made from them (``model_files.py``).
"""

from __future__ import annotations

import platform
from typing import Any, Dict, Iterable, List, Optional

# Flags worth reporting, as /proc/cpuinfo spells them (x86 "flags", ARM "Features").
X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx_vnni_int8", "amx_tile", "amx_int8", "amx_bf16")
ARM_FLAGS = ("neon", "asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")
X86_INT8_DOT = ("avx512_vnni", "avx_vnni", "avx_vnni_int8", "amx_int8")
ARM_INT8_DOT = ("asimddp", "i8mm")


def read_cpuinfo(path: str = "/proc/cpuinfo") -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The CPU's marketing name: engines optimised for one CPU may use instructions another lacks."""
    for line in (read_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.lower().startswith(("model name", "hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str) -> List[str]:
    """The first processor's flags (x86 ``flags``, ARM ``Features``), as listed."""
    for line in cpuinfo.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features") and ":" in line:
            return line.split(":", 1)[1].split()
    return []


def arch_family(machine: str) -> str:
    """x86 or arm (or the machine string as is): the INT8 rules differ between the two."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine.startswith(("aarch64", "arm")):
        return "arm"
    return machine or "unknown"


def summarize_isa(machine: str, flags: Iterable[str]) -> Dict[str, Any]:
    """Pure: the reportable ISA facts, including whether INT8 sums can saturate on this CPU."""
    present = set(flags)
    family = arch_family(machine)
    known = X86_FLAGS if family == "x86" else ARM_FLAGS if family == "arm" else ()
    dot = X86_INT8_DOT if family == "x86" else ARM_INT8_DOT if family == "arm" else ()
    return {
        "machine": machine, "family": family,
        "isa": [flag for flag in known if flag in present],
        "int8_dot": sorted(flag for flag in dot if flag in present),
        # x86 without VNNI multiplies u8*s8 pairs into int16 (vpmaddubsw): U8S8 may saturate there.
        "u8s8_saturates": family == "x86" and not any(flag in present for flag in X86_INT8_DOT),
        "flags_read": bool(present),
    }


def describe_cpu(cpuinfo: Optional[str] = None, machine: Optional[str] = None) -> Dict[str, Any]:
    """The CPU as the device reports it (name, ISA), from /proc/cpuinfo and ``platform``."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    facts = summarize_isa(machine or platform.machine(), cpu_flags(text))
    facts["model"] = cpu_model(text)
    return facts
