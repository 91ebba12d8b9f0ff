"""User-facing errors: one line saying what is wrong, where, and what to do; the CLI maps them to exit codes."""

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


def save_traceback() -> str:
    """The current exception's traceback in ``$EDGEKIT_HOME/crash-<time>.txt`` (or the reason it could not be)."""
    import time
    import traceback

    from .config import host_home

    try:
        home = host_home()
        home.mkdir(parents=True, exist_ok=True)
        path = home / f"crash-{time.strftime('%Y%m%dT%H%M%S')}.txt"
        path.write_text(traceback.format_exc())
        return str(path)
    except OSError as exc:
        return f"the traceback (not saved: {exc}; rerun with EDGEKIT_TRACEBACK=1 to see it)"
