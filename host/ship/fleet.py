"""The devices of deploy.toml: listing, adding, setting up and checking them; pushing to many of them in
parallel (bounded), one result per device whatever happens."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import NAME, Config, deploy_toml, load_config, read_toml_text
from ..errors import ConfigError, EdgekitError

FleetSink = Callable[[str, dict[str, Any]], None]


def select_devices(config: Config, device: Optional[str], all_devices: bool, group: Optional[str]) -> list[str]:
    chosen = [flag for flag in (device, all_devices or None, group) if flag]
    if len(chosen) != 1:
        raise ConfigError("name one device, or --all, or --group G")
    if device:
        config.device(device)
        return [device]
    names = sorted(config.devices) if all_devices else sorted(n for n, d in config.devices.items()
                                                              if group in d.groups)
    if not names:
        raise ConfigError(f"{config.path.name}: no devices" + (f" in group {group!r}" if group else ""))
    return names


def push_fleet(config: Config, names: list[str], parallel: int, say: Callable[[str], None],
               on_event: FleetSink) -> dict[str, dict[str, Any]]:
    """Optimise once, then push to every device at most ``parallel`` at a time; failures become reports."""
    from ..optimize import optimize
    from .push import push

    if not config.prune.latency_target:  # a latency target prunes per device, against each one's latency model
        optimize(config, say)  # once, before the threads: they all find it cached
    lock = threading.Lock()

    def one(name: str) -> dict[str, Any]:
        try:
            report, _ = push(config, name, lambda message: None,
                             lambda event: _locked(lock, on_event, name, event))
            return report
        except EdgekitError as exc:
            return {"job": None, "status": "failed", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one broken device must not stop the fleet
            return {"job": None, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = dict(zip(names, pool.map(one, names)))
    return results


def _locked(lock: threading.Lock, sink: FleetSink, name: str, event: dict[str, Any]) -> None:
    with lock:
        sink(name, event)


def device_rows(config: Config) -> list[dict[str, Any]]:
    """``edgekit devices``: every device deploy.toml declares plus the built-in ``local``, with its settings."""
    return [dict(name=n, **config.device(n).model_dump()) for n in sorted(set(config.devices) | {"local"})]


def check_device_name(name: str) -> None:
    if not re.fullmatch(NAME, name) or name == "local":
        raise ConfigError(f"device name {name!r}: use letters, digits, '.', '_' or '-' ('local' is built in)")


def setup_device(config: Config, name: str, with_onnxruntime: bool, with_openvino: bool,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """``edgekit device setup``: the agent installed on an ssh device; what was installed where."""
    from .transports.setup import install
    from .transports.ssh import SSHTransport

    device = config.device(name)
    if device.kind != "ssh":
        raise ConfigError(f"device {name!r} is {device.kind}; only ssh devices are set up")
    transport = SSHTransport(name, device)
    try:
        result = install(transport, device, with_onnxruntime, say, with_openvino=with_openvino)
    finally:
        transport.close()
    return {"device": name, "venv": result.venv, "service": result.service, "wheels": result.wheels,
            "python": result.python.python, "machine": result.python.machine}


def check_device(config: Config, name: str) -> dict[str, Any]:
    """``edgekit device check``: reachability, agent, backends, CUDA, Jetson, disk, active models."""
    from .transports import open_transport
    from .transports.setup import check

    transport = open_transport(name, config.device(name))
    try:
        return check(transport)
    finally:
        transport.close()


def append_device(config_path: Path, name: str, host: str, user: Optional[str], port: Optional[int],
                  backend: str) -> bool:
    """Add a [devices.NAME] table to deploy.toml unless it is there; validated before it is kept."""
    if not config_path.is_file():
        return False
    text = read_toml_text(config_path)
    if load_config(config_path).devices.get(name) is not None:
        return False
    table = deploy_toml(devices={name: {"host": host, "user": user, "port": port, "backend": backend}})
    config_path.write_text(text.rstrip("\n") + "\n\n" + table)  # quoted: [devices."jet.lab"]
    try:
        load_config(config_path)
    except ConfigError:
        config_path.write_text(text)
        raise
    return True
