"""The agent's admin interface: the few calls a host makes on an agent root besides the spool protocol.

Both transports use these same functions: the SSH one runs them on the device as ``edgekit-agent
status|commit-blob|gc`` (``main.py``), the local one calls them in-process. That is why they take a root,
return plain data and never need a running agent; none of them imports the daemon or the job runner.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import __version__
from ..contract.protocol import DEVICE_INFO, SPOOL_VERSION
from ..errors import ConfigError, device_error
from .spool import LOCK, STATUS_FILE, AgentLock, Spool, read_json, write_json_atomic
from .store import CONFIG as STORE_CONFIG
from .store import collect, load_config, save_config, save_state, usage

# The runtimes, the CPU and host probes and the health check are imported where they are used: commit-blob and gc
# run on the device once per push, and each import here would be paid by every one of those short processes.


def open_root(root: Any) -> Spool:
    """The agent root at ``root``, its layout created (mode 0700) if missing: the local device's host side
    writes into it before any agent has started there."""
    return Spool(root).ensure()


def agent_running(root: Path) -> bool:
    """True when some process holds the root's agent lock."""
    spool = Spool(root)
    if not (spool.root / LOCK).exists():
        return False
    probe = AgentLock(spool)
    if probe.acquire():
        probe.handle.close()
        return False
    return True


def status(root: Path, load_engines: bool = False) -> Dict[str, Any]:
    """`edgekit-agent status`: the agent, its jobs and models, its disk, and what the device can run (JSON).

    ``model_health`` says, per model, whether its ``current`` engine is there (and, with ``load_engines``,
    loads in its runtime) and which engine would serve otherwise."""
    from .health import model_health

    spool = Spool(root)
    info = read_json(spool.root / STATUS_FILE) or {}
    models = {}
    if spool.models.is_dir():
        models = {p.name: spool.current(p.name) for p in sorted(spool.models.iterdir())}
    disk = usage(spool) if spool.blobs.is_dir() else {}
    return {
        "version": __version__, "root": str(spool.root), "running": agent_running(spool.root),
        "pid": info.get("pid"), "queued": spool.queued() if spool.queue.is_dir() else [],
        "unfinished": spool.unfinished() if spool.jobs.is_dir() else [], "models": models,
        "model_health": model_health(spool, load_engines),
        "free_disk_bytes": disk.get("free_bytes"), "store_bytes": disk.get("store_bytes"),
        "store": vars(load_config(spool)), **describe_device(),
    }


def describe_device() -> Dict[str, Any]:
    """What the device is and can run (the runtimes, the host, CUDA, the CPU): what a push chooses the files
    by. It changes only when software is installed: the agent writes it at start and after a failed job (what an
    upgrade under a running agent leads to), as ``DEVICE_INFO``, and the host reads that file instead of running
    ``status`` on every push."""
    from ..backends import describe_all
    from ..backends.tensorrt.cuda import cuda_bindings
    from ..cpu import describe_cpu
    from ..telemetry import describe_host

    return {"version": __version__, "spool": SPOOL_VERSION, "backends": describe_all(), "device": describe_host(),
            "cuda": cuda_bindings(),
            "cpu": describe_cpu()}


def write_device_info(root: Path) -> None:
    """`edgekit-agent describe`: ``describe_device`` into the root's ``DEVICE_INFO`` file. The agent runs it at
    start in a process of its own: describing TensorRT initialises CUDA, which a process must not do before it
    forks the job workers."""
    write_json_atomic(Spool(root).root / DEVICE_INFO, describe_device())


def commit_uploads(root: Path, shas: List[str], writer: str) -> Dict[str, str]:
    """Several uploads committed in one call (one process on the device per push, not one per blob): {sha: the
    problem} for those that failed."""
    problems = {sha: commit_upload(root, sha, writer) for sha in shas}
    return {sha: problem for sha, problem in problems.items() if problem}


def commit_upload(root: Path, sha: str, writer: str) -> Optional[str]:
    """The upload's last step, run on the device: the hash is checked where the bytes landed. An error or None."""
    spool = Spool(root)
    try:
        part = spool.part(sha, writer)
        if spool.has_blob(sha):  # another writer committed the same content first
            if part.is_file():
                part.unlink()
            return None
        spool.commit_blob(sha, part)
    except ValueError as exc:
        return str(exc)
    except OSError as exc:
        return device_error(exc, "storing an upload")
    return None


def gc(root: Path, need_bytes: int, settings: Dict[str, Any]) -> Dict[str, Any]:
    """`edgekit-agent gc`: optionally store new limits, then collect; says whether ``need_bytes`` fit."""
    spool = open_root(root)
    config = None
    if settings:
        try:
            config = save_config(spool, dict(read_json(spool.root / STORE_CONFIG) or {}, **settings))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    answer = collect(spool, config, need_bytes)
    save_state(spool)
    return answer


def install_service(root: str, output: Optional[str], system: bool, user: Optional[str]) -> str:
    """`edgekit-agent install-service`: the unit text, naming this installation's agent; written to ``output``."""
    from ..contract.service import unit_text

    agent = shutil.which("edgekit-agent") or os.path.join(os.path.dirname(sys.executable), "edgekit-agent")
    text = unit_text(os.path.abspath(agent), str(Path(root).expanduser().resolve()),
                     user or os.environ.get("USER"), system)
    if output:
        Path(output).expanduser().write_text(text)
    return text
