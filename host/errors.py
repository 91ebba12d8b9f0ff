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
