"""``edgekit-agent``: the device daemon and its small admin commands.

Only the command line lives here: ``serve`` is the daemon (``daemon.py``, started by the systemd unit's
ExecStart), the others the admin interface the SSH transport runs on the device (``admin.py``). argparse
rather than typer: the device side must run with nothing but numpy (and the runtimes) installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .. import __version__
from ..contract.service import CONFIG_ERROR_EXIT
from ..errors import ConfigError, device_error
from .admin import commit_uploads, gc, install_service, status, write_device_info
from .spool import log

DEFAULT_ROOT = "~/.edgekit"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgekit-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version="edgekit-agent " + __version__)
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve", help="run the agent: take published jobs one at a time")
    run.add_argument("--root", default=DEFAULT_ROOT)
    run.add_argument("--poll", type=float, default=0.1, help="seconds between looks at the queue")
    run.add_argument("--once", action="store_true", help="exit when the queue is empty")
    info = sub.add_parser("status", help="print the agent's state, backends and device as JSON")
    info.add_argument("--root", default=DEFAULT_ROOT)
    info.add_argument("--load-engines", action="store_true", help="also load each active model's engine")
    describe = sub.add_parser("describe", help="write device.json in the root: the runtimes and CPU a push chooses "
                                               "the files by (the agent runs it at start)")
    describe.add_argument("--root", default=DEFAULT_ROOT)
    blob = sub.add_parser("commit-blob", help="move uploaded blobs/<sha>.<writer>.part files into the store if "
                                              "their hashes match")
    blob.add_argument("--root", default=DEFAULT_ROOT)
    blob.add_argument("--writer", default="", help="the uploader's part name (blobs/<sha>.<writer>.part)")
    blob.add_argument("sha256", nargs="+", help="one or more blobs (one call commits a whole upload)")
    collect_cmd = sub.add_parser("gc", help="remove blobs, engines and jobs nothing needs (LRU) beyond the store "
                                            "limit and free-space floor; print what is left as JSON")
    collect_cmd.add_argument("--root", default=DEFAULT_ROOT)
    collect_cmd.add_argument("--need", type=int, default=0, help="bytes about to be uploaded: make room for them")
    collect_cmd.add_argument("--store-limit-mb", type=float, help="keep the store under this (saved in config.json)")
    collect_cmd.add_argument("--min-free-mb", type=float, help="keep this much disk free (saved in config.json)")
    collect_cmd.add_argument("--keep-jobs", type=int, help="always keep the last N jobs (saved in config.json)")
    unit = sub.add_parser("install-service", help="write the systemd unit that starts the agent at boot")
    unit.add_argument("--root", default=DEFAULT_ROOT)
    unit.add_argument("--output", help="where to write the unit (default: print it)")
    unit.add_argument("--system", action="store_true", help="a system unit (runs as --user) instead of a user unit")
    unit.add_argument("--user", help="the unprivileged user a system unit runs as")
    return parser.parse_args(argv)


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root).expanduser()


def _serve(args: argparse.Namespace) -> int:
    from .daemon import serve  # the job runner and its imports: not for the short admin commands

    return serve(_root(args), args.poll, args.once)


def _status(args: argparse.Namespace) -> int:
    print(json.dumps(status(_root(args), args.load_engines), indent=2, sort_keys=True))
    return 0


def _describe(args: argparse.Namespace) -> int:
    write_device_info(_root(args))
    return 0


def _commit_blob(args: argparse.Namespace) -> int:
    """Every blob named is committed; exit 1 with ``error: <sha>: <reason>`` per failed one on stderr (the SSH
    transport shows the last line to the user)."""
    problems = commit_uploads(_root(args), args.sha256, args.writer)
    for sha, problem in problems.items():
        log("error: {}: {}".format(sha, problem))
    return 1 if problems else 0


def _gc(args: argparse.Namespace) -> int:
    """Only the limits given on the command line are stored; the others stay as config.json has them."""
    settings = {k: v for k, v in (("store_limit_mb", args.store_limit_mb), ("min_free_mb", args.min_free_mb),
                                  ("keep_jobs", args.keep_jobs)) if v is not None}
    print(json.dumps(gc(_root(args), args.need, settings), indent=2, sort_keys=True))
    return 0


def _install_service(args: argparse.Namespace) -> int:
    text = install_service(args.root, args.output, args.system, args.user)
    if not args.output:
        sys.stdout.write(text)
    return 0


COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "serve": _serve, "status": _status, "describe": _describe, "commit-blob": _commit_blob, "gc": _gc,
    "install-service": _install_service,
}


def main(argv: Optional[List[str]] = None) -> int:
    """Exit codes: 0 ok, 1 the command failed, 2 (CONFIG_ERROR_EXIT) bad configuration: systemd does not
    restart the agent for that one, 130 interrupted. No command prints the help."""
    args = parse_args(argv)
    command = COMMANDS.get(args.command)
    if command is not None:
        try:
            return command(args)
        except ConfigError as exc:
            log("error: {}".format(exc))
            return CONFIG_ERROR_EXIT
        except OSError as exc:
            log("error: {}".format(device_error(exc, "running `{}`".format(args.command))))
            return 1
        except KeyboardInterrupt:
            return 130
    parse_args(["--help"])
    return CONFIG_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
