"""How the host reaches a device's agent root: on this machine (``local``) or over SSH."""

from __future__ import annotations

from ..config import DeviceSection
from .base import Transport


def open_transport(name: str, device: DeviceSection) -> Transport:
    if device.kind == "local":
        from .local import LocalTransport

        return LocalTransport(device.root)
    from .ssh import SSHTransport

    return SSHTransport(name, device)
