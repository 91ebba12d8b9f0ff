"""Errors the agent reports as a job failure (one line, no traceback)."""


class JobError(Exception):
    """A job cannot go on; the message is what the user sees in the report."""


class ConfigError(Exception):
    """The agent's own configuration is wrong; the service must not restart in a loop."""


class StaleEngine(JobError):
    """A cached engine the runtime cannot load (another runtime build or driver): the job rebuilds it once."""
