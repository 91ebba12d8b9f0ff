"""How the host reaches a device's agent root: on this machine (``local``) or over SSH.

``client.py`` is the spool protocol, written once over ``fs.py``'s small file-system interface;
``local.py`` and ``ssh.py`` (with ``sftp.py``) only say how to reach the root; ``connect.py`` makes
SSH connections; ``setup.py`` installs the agent on a device.
"""

from __future__ import annotations

from ...config import DeviceSection
from .client import SpoolClient

Transport = SpoolClient


def open_transport(name: str, device: DeviceSection) -> SpoolClient:
    if device.kind == "local":
        from .local import LocalTransport

        return LocalTransport(device.root, name)
    from .ssh import SSHTransport

    return SSHTransport(name, device)
