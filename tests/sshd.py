"""Real OpenSSH servers on 127.0.0.1 for the tests: random ports, generated keys, an unprivileged user.

As root the devices log in as ``edgekit-dev`` (created if missing), so the agent runs unprivileged as
on a Jetson; otherwise as the current user.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEVICE_USER = "edgekit-dev"
SESSION = f"p{os.getpid()}"


def device_dir(name: str) -> str:
    """The folder name, in the device user's home, of this test session's device ``name`` (or its venv).

    It carries the session's pid, so two test sessions on one machine (a CI run beside a developer's
    targeted run) neither clear each other's device roots nor kill each other's agents.
    """
    return f".edgekit-test-{SESSION}-{name}"


def device_root(name: str) -> str:
    """``device_dir`` as deploy.toml writes it (resolved in the device user's home)."""
    return "~/" + device_dir(name)


def clear_stale(home: Path) -> None:
    """Remove the device folders of test sessions that have ended; a live session's are left alone."""
    for stale in home.glob(".edgekit-test-*"):
        owner = re.match(r"\.edgekit-test-p(\d+)-", stale.name)
        if owner is None or not Path(f"/proc/{owner.group(1)}").exists():  # that session has ended
            shutil.rmtree(stale, ignore_errors=True)


def stop_session_agents(user: str, home: Path) -> None:
    """Kill this session's agents (found by their root, on their command line) and remove its device folders."""
    if os.geteuid() == 0:
        subprocess.run(["pkill", "-KILL", "-u", user, "-f", f".edgekit-test-{SESSION}-"], capture_output=True)
    for status in home.glob(device_dir("*") + "/agent.json"):
        try:
            os.kill(json.loads(status.read_text())["pid"], signal.SIGKILL)
        except (OSError, KeyError, ValueError):
            pass
    for folder in home.glob(device_dir("*")):
        shutil.rmtree(folder, ignore_errors=True)


def sshd_binary() -> str | None:
    return shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def device_user(name: str = DEVICE_USER) -> tuple[str, Path]:
    """An unprivileged login for the devices (``name``, created if missing) when root; else the current user."""
    if os.geteuid() != 0:
        return getpass.getuser(), Path.home()
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
        entry = pwd.getpwnam(name)
    # A new account is locked ("!"), which sshd refuses even for keys without PAM; "*" means no password.
    subprocess.run(["usermod", "-p", "*", name], check=True)
    return name, Path(entry.pw_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_home(work: Path) -> Path:
    """A host user's home under ``work`` for a benchmark: an SSH key, and HOME/EDGEKIT_HOME pointing there."""
    os.chmod(work, 0o755)
    home = work / "home"
    (home / ".ssh").mkdir(parents=True)
    keygen(home / ".ssh" / "id_ed25519")
    os.environ.update(HOME=str(home), EDGEKIT_HOME=str(home / "edgekit"), SSH_AUTH_SOCK="")
    return home


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class SSHServer:
    directory: Path
    port: int
    user: str
    process: subprocess.Popen | None = None

    @property
    def host_key(self) -> Path:
        return self.directory / "host_key"

    def start(self, authorized_keys: Path) -> "SSHServer":
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o755)
        if not self.host_key.exists():
            keygen(self.host_key)
        shutil.copy(authorized_keys, self.directory / "authorized_keys")
        os.chmod(self.directory / "authorized_keys", 0o644)
        config = self.directory / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes", "StrictModes no", "UsePAM no",
            f"AllowUsers {self.user}", f"PidFile {self.directory / 'sshd.pid'}", "LogLevel ERROR",
            "Subsystem sftp internal-sftp", "MaxStartups 50", "MaxSessions 50", "",
        ]))
        Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
        self.process = subprocess.Popen([sshd_binary(), "-D", "-e", "-f", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=open(self.directory / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, (self.directory / "sshd.log").read_text()
                time.sleep(0.05)
        raise RuntimeError("sshd did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)

    def known_hosts_line(self) -> str:
        kind, key = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}"
