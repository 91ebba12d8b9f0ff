"""SSH connections with security on by default: strict host keys, key authentication, no passwords.

Where a destination comes from: the device's ``host`` (an ``~/.ssh/config`` alias works) with
HostName, User, Port, IdentityFile and ProxyJump from that file, then deploy.toml's ``user``/``port``.
Host keys are checked against edgekit's own known_hosts (``$EDGEKIT_HOME/known_hosts``, written by
``edgekit device add``) and the user's ``~/.ssh/known_hosts``; an unknown or changed key is refused with
its fingerprint in the message.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import paramiko

from ...config import DeviceSection, host_home
from ...errors import CheckFailed, ConfigError
from ..inventory import ssh_config_path

CONNECT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Destination:
    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    identity_files: tuple[str, ...] = ()
    proxy_jump: Optional[str] = None

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names the host in known_hosts: ``host`` on port 22, ``[host]:port`` otherwise."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}" if self.user else f"{self.hostname}:{self.port}"


def resolve(host: str, user: Optional[str] = None, port: Optional[int] = None,
            config_text: Optional[str] = None) -> Destination:
    """Apply ``~/.ssh/config`` (or ``config_text``) to ``host``; explicit user/port win."""
    config = paramiko.SSHConfig.from_text(config_text) if config_text is not None else _load_config()
    entry = config.lookup(host)
    jump = entry.get("proxyjump")
    return Destination(
        alias=host,
        hostname=entry.get("hostname", host),
        port=int(port or entry.get("port", 22)),
        user=user or entry.get("user") or getpass.getuser(),
        identity_files=tuple(os.path.expanduser(p) for p in entry.get("identityfile", [])),
        proxy_jump=None if jump in (None, "none") else jump,
    )


def _load_config() -> paramiko.SSHConfig:
    path = ssh_config_path()
    return paramiko.SSHConfig.from_path(str(path)) if path.is_file() else paramiko.SSHConfig()


def destination_for(device: DeviceSection) -> Destination:
    if not device.host:
        raise ConfigError("the device has no host")
    return resolve(device.host, device.user, device.port)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint: base64 of the key blob's sha256, without padding."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_files() -> tuple[Path, Path]:
    """(edgekit's own, writable; the user's OpenSSH file, read only)."""
    return host_home() / "known_hosts", Path("~/.ssh/known_hosts").expanduser()


class UnknownHostKey(CheckFailed):
    def __init__(self, destination: Destination, key: paramiko.PKey) -> None:
        self.key = key
        self.fingerprint = fingerprint(key)
        super().__init__(f"{destination.alias} ({destination.hostname}:{destination.port}) offers an unknown "
                         f"{key.get_name()} host key {self.fingerprint}; check it on the device "
                         f"(ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and run `edgekit device add "
                         f"{destination.alias} --host {destination.alias} --trust {self.fingerprint}`")


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(self.destination, key)


def _client(destination: Destination) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    ours, users = known_hosts_files()
    if users.is_file():
        client.load_system_host_keys(str(users))
    if ours.is_file():
        client.load_host_keys(str(ours))
    client.set_missing_host_key_policy(_RefuseUnknown(destination))
    return client


def connect(destination: Destination, _depth: int = 0) -> paramiko.SSHClient:
    """An authenticated client, through ProxyJump hosts when configured (each checked the same way)."""
    sock = None
    jump_client = None
    if destination.proxy_jump:
        if _depth > 4:
            raise ConfigError(f"{destination.alias}: ProxyJump chain is too long")
        jump_spec = destination.proxy_jump.split(",")[0]
        jump_user, _, jump_host = jump_spec.rpartition("@")
        jump_name, _, jump_port = jump_host.partition(":")
        jump_client = connect(resolve(jump_name, jump_user or None, int(jump_port) if jump_port else None),
                              _depth + 1)
        sock = jump_client.get_transport().open_channel("direct-tcpip", (destination.hostname, destination.port),
                                                        ("127.0.0.1", 0))
    client = _client(destination)
    try:
        client.connect(destination.hostname, port=destination.port, username=destination.user,
                       key_filename=list(destination.identity_files) or None, allow_agent=True,
                       look_for_keys=True, timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
                       auth_timeout=CONNECT_TIMEOUT, sock=sock, passphrase=None)
    except paramiko.BadHostKeyException as exc:
        raise CheckFailed(f"HOST KEY CHANGED for {destination.alias} ({destination.hostname}:{destination.port}): "
                          f"expected {fingerprint(exc.expected_key)}, got {fingerprint(exc.key)}. Refusing to "
                          "connect (this may be an attack). If the device was reinstalled, remove its line from "
                          f"{known_hosts_files()[0]} and run `edgekit device add`") from None
    except paramiko.AuthenticationException:
        raise CheckFailed(f"{destination}: key authentication failed; add your public key to the device's "
                          "~/.ssh/authorized_keys or set IdentityFile in ~/.ssh/config") from None
    except (OSError, socket.timeout, paramiko.SSHException) as exc:
        if isinstance(exc, UnknownHostKey):
            raise
        raise CheckFailed(f"cannot reach {destination}: {exc}") from None
    if jump_client is not None:
        client._edgekit_jump = jump_client  # keep the jump host's connection alive with this one
    return client


def scan_host_key(destination: Destination) -> paramiko.PKey:
    """The key a host offers, without authenticating (for `edgekit device add`)."""
    try:
        sock = socket.create_connection((destination.hostname, destination.port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise CheckFailed(f"cannot reach {destination}: {exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=CONNECT_TIMEOUT)
        return transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise CheckFailed(f"{destination}: SSH handshake failed: {exc}") from None
    finally:
        transport.close()


def trust_host_key(destination: Destination, key: paramiko.PKey) -> Path:
    """Record the key in edgekit's known_hosts (mode 0600)."""
    path = known_hosts_files()[0]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = paramiko.HostKeys(str(path)) if path.is_file() else paramiko.HostKeys()
    keys.add(destination.known_hosts_name, key.get_name(), key)
    keys.save(str(path))
    os.chmod(path, 0o600)
    return path


def run(client: paramiko.SSHClient, command: str, timeout: float = 600.0) -> tuple[int, str, str]:
    """Run a command on the device; returns exit status, stdout and stderr (decoded)."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out = stdout.read().decode("utf-8", "replace")
    err = stderr.read().decode("utf-8", "replace")
    return stdout.channel.recv_exit_status(), out, err
