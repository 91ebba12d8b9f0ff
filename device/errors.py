"""Errors the agent reports as a job failure (one line, no traceback)."""

from __future__ import annotations

import errno
from typing import Any, Dict, Optional


class JobError(Exception):
    """A job cannot go on; the message is what the user sees in the report, ``details`` join the report."""

    def __init__(self, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.details = details or {}


class ConfigError(Exception):
    """The agent's own configuration is wrong; the service must not restart in a loop."""


class StaleEngine(JobError):
    """A cached engine the runtime cannot load (another runtime build or driver): the job rebuilds it once."""


_DISK_ADVICE = {
    errno.ENOSPC: "the device's disk is full; the agent removed what it may (`edgekit-agent gc`); free more space "
                  "or lower store_limit_mb, then push again",
    errno.EDQUOT: "the device user's disk quota is exhausted; free space on the device, then push again",
    errno.EROFS: "the device's file system is read-only (a failing SD card or eMMC remounts itself read-only); "
                 "check `dmesg` on the device",
    errno.EIO: "an I/O error on the device's storage; check `dmesg` on the device, the storage may be failing",
    errno.EACCES: "the agent may not write there; the agent root must belong to the device user",
    errno.EPERM: "the agent may not write there; the agent root must belong to the device user",
}


# The disk itself failed: no other runtime would fare better, so ``auto`` stops and says so.
STORAGE_ERRNOS = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO))


def storage_failure(exc: BaseException) -> bool:
    """True for an OSError that is the disk's fault (full, quota, read-only, I/O error), not the runtime's."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


def device_error(exc: OSError, doing: str) -> str:
    """One line for a storage failure: what happened, while doing what, and what to do."""
    reason = exc.strerror or str(exc)
    advice = _DISK_ADVICE.get(exc.errno or 0, "check the device's storage and the agent's log")
    return "device storage error while {}: {}; {}".format(doing, reason, advice)
