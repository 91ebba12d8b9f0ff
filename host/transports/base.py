"""The operations push needs from a device, whatever carries them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

BytesProgress = Callable[[int], None]


class Transport:
    name = "base"

    def ensure_agent(self) -> None:
        """Make sure an agent serves the root (the local device starts one; SSH devices run it at boot)."""

    def trust(self, public_line: str) -> None:
        """Add the host's signing key to the device's trusted keys, where the transport may."""
        raise NotImplementedError

    def missing(self, hashes: list[str]) -> list[str]:
        raise NotImplementedError

    def upload(self, sha: str, path: Path, progress: BytesProgress) -> None:
        raise NotImplementedError

    def publish(self, job: str, manifest: bytes, signature: bytes) -> None:
        raise NotImplementedError

    def events(self, job: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        raise NotImplementedError

    def state(self, job: str) -> Optional[dict[str, Any]]:
        raise NotImplementedError

    def report(self, job: str) -> Optional[dict[str, Any]]:
        raise NotImplementedError

    def agent_alive(self) -> bool:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """The agent's ``status``: backends (versions, availability), CPU and ISA, models, free disk."""
        raise NotImplementedError

    def revive_agent(self) -> bool:
        """Start a dead agent again where the host may (local); on real devices systemd does it."""
        return False

    def close(self) -> None:
        """Release connections."""
