"""User-facing errors: one line saying what is wrong, where, and what to do; the CLI maps them to exit codes."""

from __future__ import annotations

import contextlib
from typing import Iterator

EXIT_FAILED = 1
EXIT_USAGE = 2


class EdgekitError(Exception):
    """A problem the user can fix; printed as one line, never with a traceback."""

    exit_code = EXIT_FAILED


class ConfigError(EdgekitError):
    """deploy.toml or a command-line argument is wrong."""

    exit_code = EXIT_USAGE


class CheckFailed(EdgekitError):
    """A job, validation or budget check failed."""

    exit_code = EXIT_FAILED


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the host was doing: the CLI says it in one line (exit 130).

    Raised in place of the KeyboardInterrupt by the step that was running (``during``); the innermost
    step names it, so an interrupt inside a stage inside a push names the stage.
    """

    def __init__(self, doing: str, published: str = "") -> None:
        super().__init__(doing)
        self.doing, self.published = doing, published

    def line(self) -> str:
        if self.published:
            return (f"interrupted during {self.doing}; job {self.published} was published and keeps running on the "
                    "device (`edgekit status` follows it); cached stages kept")
        return f"interrupted during {self.doing}; nothing changed on the device; cached stages kept"

    @staticmethod
    @contextlib.contextmanager
    def during(doing: str, published: str = "") -> Iterator[None]:
        try:
            yield
        except Interrupted:
            raise
        except KeyboardInterrupt:
            raise Interrupted(doing, published) from None
