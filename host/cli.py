"""The ``edgekit`` command line (typer + rich). Exit codes: 0 ok, 1 a failed check or job, 2 bad usage/config."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EXIT_FAILED, CheckFailed, ConfigError, EdgekitError, Interrupted

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune, fold, quantise and ship CNNs to edge devices; build, validate and benchmark there.")
data_app = typer.Typer(no_args_is_help=True, help="Prepare data sets.")
app.add_typer(data_app, name="data")
device_app = typer.Typer(no_args_is_help=True, help="Add, set up and check devices reached over SSH.")
app.add_typer(device_app, name="device")
rollout_app = typer.Typer(no_args_is_help=True, help="Follow and resume fleet rollouts (push --waves).")
app.add_typer(rollout_app, name="rollout")
console = Console()
err = Console(stderr=True)
if not console.is_terminal:  # pipes and CI logs: keep report rows on one line
    console = Console(width=200)

ConfigOption = typer.Option(Path("deploy.toml"), "--config", "-c", help="the project's deploy.toml")
JsonOption = typer.Option(False, "--json", help="print the result as JSON")


def _load(path: Path):
    from .config import load_config

    return load_config(path)


def _emit(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _say(json_mode: bool):
    if json_mode:
        return lambda message: err.print(f"[dim]{escape(str(message))}[/dim]")
    return lambda message: console.print(escape(message) if isinstance(message, str) else message)


@app.command()
def init(directory: Path = typer.Argument(Path("."), help="where to write deploy.toml"),
         arch: str = typer.Option("resnet20", help="zoo model or module:function")) -> None:
    """Write a starter deploy.toml."""
    from .train.project import init_project

    target = init_project(directory, arch)
    console.print(f"wrote {target}; next: `edgekit data digits data/digits`, `edgekit train`, `edgekit push local`")


@data_app.command("digits")
def data_digits(directory: Path = typer.Argument(..., help="where to write the CIFAR-format data set"),
                json_mode: bool = JsonOption) -> None:
    """Write scikit-learn's handwritten digits (real images) as a 3×32×32 CIFAR-format data set."""
    from .train.data import prepare_digits

    result = prepare_digits(directory)
    if json_mode:
        _emit(result)
    else:
        console.print(f"wrote {result['train']} training and {result['test']} test images to {directory}")


@app.command()
def train(config_path: Path = ConfigOption, epochs: Optional[int] = typer.Option(None, help="override train.epochs"),
          json_mode: bool = JsonOption) -> None:
    """Train the project's model on its data set and write model.checkpoint (as DDP under torchrun, or with
    [train] nproc = N, which starts N workers)."""
    from .train import distributed
    from .train.project import no_progress, train_project

    config = _load(config_path)
    if config.train.nproc > 1 and not distributed.active():
        raise typer.Exit(distributed.launch(config.train.nproc, _rerun_args("train", config_path, json_mode,
                                                                            epochs=epochs)))
    trained = train_project(config, epochs, _epoch_bar(transient=json_mode) if distributed.is_main() else no_progress)
    if not distributed.is_main():
        return
    if json_mode:
        _emit(dict(trained.meta, checkpoint=str(trained.checkpoint), warning=trained.warning, hint=trained.hint))
    else:
        console.print(f"top-1 on {trained.test_images} held-out images: {trained.meta['top1']:.2%}; "
                      f"saved {trained.checkpoint}")
        if trained.skipped:
            console.print(f"skipped {trained.skipped} unreadable image(s) (data.skip_unreadable)")
    if trained.warning:
        err.print(f"[yellow]{escape(trained.warning)}[/yellow]")
    if trained.hint:
        err.print(f"[yellow]{escape(trained.hint)}[/yellow]")


def _rerun_args(command: str, config_path: Path, json_mode: bool, **options: Any) -> list[str]:
    """This command's arguments for the workers ``[train] nproc`` starts."""
    args = [command, "--config", str(config_path.resolve())] + (["--json"] if json_mode else [])
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)] if value is not None else []
    return args


def _epoch_bar(transient: bool):
    """A rich bar over the training epochs with the last epoch's loss (on stderr)."""
    from contextlib import contextmanager

    from rich.progress import Progress

    @contextmanager
    def bar(name: str, epochs: int):
        with Progress(console=err, transient=transient) as progress:
            task = progress.add_task(f"training {name}", total=epochs)
            yield lambda epoch, _, loss: progress.update(task, completed=epoch,
                                                         description=f"training {name} (loss {loss:.3f})")
    return bar


@app.command("optimize")
def optimize_command(config_path: Path = ConfigOption, force: bool = typer.Option(False, help="ignore the cache"),
                     json_mode: bool = JsonOption) -> None:
    """Fold BN, export and verify ONNX, evaluate every stage; cached by content."""
    from .optimize import optimize
    from .records.report import optimize_lines, stage_table
    from .train import distributed

    config = _load(config_path)
    result = optimize(config, _say(json_mode) if distributed.is_main() else (lambda message: None), force=force)
    if not distributed.is_main():  # a torchrun worker: rank 0 speaks for all
        return
    if json_mode:
        _emit({"directory": str(result.directory), "cached": result.cached, "stages": result.stages,
               "files": sorted(result.files)})
    else:
        console.print(stage_table(result.stages))
        for line in optimize_lines(result.host):
            console.print(line)


@app.command()
def push(device: Optional[str] = typer.Argument(None, help="device name from deploy.toml, or 'local'"),
         all_devices: bool = typer.Option(False, "--all", help="every device in deploy.toml"),
         group: Optional[str] = typer.Option(None, "--group", help="the devices of one group"),
         parallel: int = typer.Option(4, "--parallel", "--max-parallel", min=1, max=32,
                                      help="devices pushed at once (fleets)"),
         waves: Optional[str] = typer.Option(None, "--waves", help="a rollout in waves: sizes or percentages, "
                                             "the last repeating, e.g. 1,10%,100% (a canary, then waves)"),
         max_failures: int = typer.Option(0, "--max-failures", min=0, help="rollouts: failed devices tolerated "
                                          "before the rollout halts between waves"),
         config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Optimise, ship to DEVICE (or a fleet), build there, validate, benchmark, and print the latency report."""
    from .ship.fleet import select_devices
    from .train import distributed

    config = _load(config_path)
    names = select_devices(config, device, all_devices, group)
    if not distributed.is_main():  # a torchrun worker: it trains its share of the stages, rank 0 ships
        from .optimize import optimize

        optimize(config, lambda message: None)
        return
    if waves is not None:
        from .ship.rollout import start_rollout

        if device:
            raise ConfigError("--waves rolls out to a fleet: use --group G or --all instead of a device name")
        selector = {"group": group} if group else {"all": True}
        record = start_rollout(config, names, selector, waves, parallel, max_failures, _say(json_mode),
                               _fleet_events(json_mode))
        return _rollout_result(record, json_mode)
    if len(names) == 1 and device:
        return _push_one(config, names[0], json_mode)
    _push_fleet(config, names, parallel, json_mode)


def _fleet_events(json_mode: bool):
    return lambda device, event: None if json_mode or event["kind"] not in ("stage", "failed", "cache") \
        else err.print(f"[dim]{escape(device)}: {escape(str(event['message']))}[/dim]")


def _rollout_result(record, json_mode: bool, rollback: Optional[dict] = None) -> None:
    """The fleet table (or JSON) of a rollout; exit 1 when it halted or a device failed."""
    from .records.report import rollout_table
    from .ship.rollout import FAILED, iter_rows

    rows = list(iter_rows(record))
    if json_mode:
        _emit({"rollout": record.data, "rows": rows, **({"rollback": rollback} if rollback is not None else {})})
    else:
        console.print(rollout_table(rows, f"rollout {record.id} ({record.data['status']})"))
    if rollback is not None:
        failed = [name for name, report in rollback.items() if report.get("status") not in ("done", "unchanged")]
    elif record.data["status"] == "halted":
        err.print(f"[red]error:[/red] rollout {record.id} halted after wave {record.data['halted_after_wave']}: "
                  f"{escape(record.data['halt'])}; `edgekit rollback` switches the changed devices back")
        raise typer.Exit(EXIT_FAILED)
    else:
        failed = [row["device"] for row in rows if row["state"] == FAILED]
    if failed:
        err.print(f"[red]error:[/red] {len(failed)} device(s) failed: {', '.join(failed)}")
        raise typer.Exit(EXIT_FAILED)


@rollout_app.command("status")
def rollout_status(rollout: Optional[str] = typer.Argument(None, help="rollout id; default: the newest"),
                   group: Optional[str] = typer.Option(None, "--group", help="the newest rollout of this group"),
                   config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Show a rollout's fleet table from the host's record (no device is contacted)."""
    from .ship.rollout import iter_rows, load_record

    record = load_record(_load(config_path), rollout, group)
    if json_mode:
        _emit({"rollout": record.data, "rows": list(iter_rows(record))})
        return
    from .records.report import rollout_table

    console.print(rollout_table(list(iter_rows(record)), f"rollout {record.id} ({record.data['status']})"))
    if record.data.get("halt"):
        console.print(f"halted after wave {record.data['halted_after_wave']}: {escape(record.data['halt'])}")


@rollout_app.command("resume")
def rollout_resume(rollout: Optional[str] = typer.Argument(None, help="rollout id; default: the newest"),
                   config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Continue a rollout the host was interrupted in: finished devices are not pushed again."""
    from .ship.rollout import resume_rollout

    record = resume_rollout(_load(config_path), rollout, _say(json_mode), _fleet_events(json_mode))
    _rollout_result(record, json_mode)


@app.command()
def rollback(group: Optional[str] = typer.Option(None, "--group", help="the devices of one group"),
             all_devices: bool = typer.Option(False, "--all", help="every device"),
             device: Optional[str] = typer.Option(None, "--device", help="one device"),
             wave: Optional[int] = typer.Option(None, "--wave", min=1, help="only this wave of the rollout"),
             rollout: Optional[str] = typer.Option(None, "--rollout", help="rollout id; default: the newest of "
                                                   "the group"),
             parallel: int = typer.Option(4, "--parallel", "--max-parallel", min=1, max=32),
             config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Switch devices back to the engine they served before: a rollout's devices (from its record), or, without
    one, each device's `previous`. Signed like a push; nothing is rebuilt."""
    from .ship.fleet import select_devices
    from .ship.rollout import rollback_fleet

    config = _load(config_path)
    names = select_devices(config, device, all_devices, group)
    record, outcome = rollback_fleet(config, names, group if not device else None, rollout, wave, parallel,
                                     _fleet_events(json_mode))
    if record is not None:
        return _rollout_result(record, json_mode, outcome)
    if json_mode:
        _emit({"devices": outcome})
    for name, report in outcome.items():
        back = report.get("status") == "done"
        line = f"back on engine {str(report.get('engine_key'))[:12]}" if back else f"[red]{report.get('error')}[/red]"
        None if json_mode else console.print(f"{escape(name)}: {line}")
    if any(report.get("status") != "done" for report in outcome.values()):
        raise typer.Exit(EXIT_FAILED)


def _push_one(config, device: str, json_mode: bool) -> None:
    from .records.report import latency_rows, print_report, stage_table
    from .ship.push import budget_failures
    from .ship.push import push as run_push

    say = _say(json_mode)
    with err.status("working…") as status:
        def on_event(event: dict) -> None:
            status.update(f"[bold]{escape(device)}[/bold]: {escape(str(event['message']))}")
            if not json_mode:
                style = {"failed": "red", "warning": "yellow", "cache": "cyan"}.get(event["kind"], "dim")
                console.print(f"[{style}]{escape(device)}: {escape(str(event['message']))}[/{style}]")

        report, optimized = run_push(config, device, say, on_event, _UploadBar(device, status))
    failures = budget_failures(config, report)
    if json_mode:
        _emit({"report": report, "rows": latency_rows(report, device), "budget_failures": failures,
               "optimize": {"cached": optimized.cached, "directory": str(optimized.directory),
                            "stages": optimized.stages}})
    else:
        console.print(stage_table(optimized.stages))
        print_report(console, report, device)
    if report.get("status") != "done":
        raise CheckFailed(f"job {report['job']} on {device} failed: {report.get('error')}")
    if failures:  # an agent older than on-device budgets switched already; say so
        raise CheckFailed(f"{device}: over budget: {'; '.join(failures)}")


class _UploadBar:
    """A rich bar with bytes sent, total and rate while blobs go to the device (on stderr)."""

    def __init__(self, device: str, status) -> None:
        self.device, self.status, self.bar, self.task = device, status, None, None

    def start(self, total_bytes: int, files: int) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        if not total_bytes:
            return
        self.status.stop()
        self.bar = Progress(TextColumn(f"uploading {files} file(s) to {self.device}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), console=err, transient=True)
        self.bar.start()
        self.task = self.bar.add_task("upload", total=total_bytes)

    def advance(self, sent_bytes: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=sent_bytes)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.status.start()


def _push_fleet(config, names: list[str], parallel: int, json_mode: bool) -> None:
    from .records.report import latency_rows, latency_table
    from .ship.fleet import push_fleet

    outcome = push_fleet(config, names, parallel, _say(json_mode), _fleet_events(json_mode))
    rows = [row for name in names for row in latency_rows(outcome[name], name)]
    if json_mode:
        _emit({"devices": outcome, "rows": rows})
    else:
        console.print(latency_table(rows, title=f"edgekit fleet report ({len(names)} devices)"))
    failed = [name for name in names if outcome[name].get("status") != "done"]
    if failed:
        err.print(f"[red]error:[/red] {len(failed)} of {len(names)} device(s) failed: {', '.join(failed)}")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def devices(config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """List the devices deploy.toml knows (plus the built-in 'local')."""
    from .ship.fleet import device_rows

    rows = device_rows(_load(config_path))
    if json_mode:
        _emit(rows)
        return
    from .records.report import devices_table

    console.print(devices_table(rows))


@app.command()
def status(device: str = typer.Argument(...), job: Optional[str] = typer.Argument(None, help="default: the last"),
           config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Re-attach to a job on DEVICE: follow its events and print its report."""
    from .records.report import health_lines, print_report
    from .ship.push import reattach

    report = reattach(_load(config_path), device, job,
                      lambda e: None if json_mode else console.print(f"[dim]{escape(str(e['message']))}[/dim]"))
    _emit(report) if json_mode else print_report(console, report, device)
    for line in health_lines(report.get("model_health", {})):
        err.print(f"[yellow]warning:[/yellow] {device}: {escape(line)}", highlight=False, soft_wrap=True)
    if report.get("status") != "done" or not all(e["ok"] for e in report.get("model_health", {}).values()):
        raise typer.Exit(EXIT_FAILED)


@app.command()
def report(job: Optional[str] = typer.Argument(None, help="job id; default: the last run"),
           plot: bool = typer.Option(False, "--plot", help="write the run's PNG plots (and open them on a desktop)"),
           config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Print a stored report from the run history."""
    from .records.history import History
    from .records.report import print_report

    history = History(_load(config_path).state_dir / "history.db")
    stored = history.run(job)
    if plot:
        from .ship.push import replot

        stored["plots"] = replot(history, stored)
    if json_mode:
        _emit(stored)
        return
    print_report(console, stored, stored["device"])
    if plot:
        _open_files(stored["plots"])


def _open_files(paths: list[str]) -> None:
    """Open plots with the desktop's viewer when there is a desktop; the paths are printed either way."""
    import os

    if sys.platform == "darwin" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        for path in paths:
            typer.launch(path)


@app.command()
def compare(old: Optional[str] = typer.Argument(None, help="job id (default: the run before the last)"),
            new: Optional[str] = typer.Argument(None, help="job id (default: the last run)"),
            config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Compare two runs: median latencies, each run's speed-up over its baseline (the unpruned model at the
    runtime's default precision, named) and over strict FP32, host top-1."""
    from .records.history import History
    from .records.report import compare_rows, compare_table

    before, after = History(_load(config_path).state_dir / "history.db").compared(old, new)
    rows = compare_rows(before, after)
    if json_mode:
        _emit({"old": before["job"], "new": after["job"], "rows": rows})
        return
    console.print(compare_table(before["job"], after["job"], rows))


@device_app.command("add")
def device_add(name: str = typer.Argument(..., help="the device's name in deploy.toml"),
               host: str = typer.Option(..., help="host name, address or ~/.ssh/config alias"),
               user: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
               trust: Optional[str] = typer.Option(None, help="the SHA256:... fingerprint you checked on the device"),
               backend: str = typer.Option("auto", help="auto, onnxruntime, openvino or tensorrt"),
               config_path: Path = ConfigOption) -> None:
    """Show DEVICE's host key fingerprint, record it once you confirm, and add the device to deploy.toml."""
    from .ship.fleet import append_device, check_device_name
    from .ship.transports.connect import fingerprint, resolve, scan_host_key, trust_host_key

    check_device_name(name)
    destination = resolve(host, user, port)
    key = scan_host_key(destination)
    seen = fingerprint(key)
    console.print(f"{destination} offers a {key.get_name()} host key {seen}")
    if trust is not None and trust != seen:
        raise CheckFailed(f"the host key is {seen}, not the {trust} you passed: refusing to trust it")
    if trust is None:
        if not sys.stdin.isatty():
            raise ConfigError(f"not a terminal: pass --trust {seen} after checking the fingerprint on the device")
        if not typer.confirm("Is this the device's key (compare with `ssh-keygen -lf` on it)?", default=False):
            raise CheckFailed("host key not trusted; nothing was recorded")
    path = trust_host_key(destination, key)
    console.print(f"recorded the key in {path}")
    if append_device(config_path, name, host, user, port, backend):
        console.print(f"added {escape(f'[devices.{name}]')} to {config_path}; next: `edgekit device setup {name}`")


@device_app.command("setup")
def device_setup(name: str = typer.Argument(...),
                 onnxruntime: bool = typer.Option(True, "--onnxruntime/--no-onnxruntime",
                                                  help="ship ONNX Runtime for the CPU backend"),
                 openvino: bool = typer.Option(True, "--openvino/--no-openvino",
                                               help="ship OpenVINO (x86-64 and aarch64 wheels) for the CPU"),
                 config_path: Path = ConfigOption, json_mode: bool = JsonOption) -> None:
    """Install edgekit's agent on DEVICE (no internet needed there), trust this host's key, start the service."""
    from .ship.fleet import setup_device

    summary = setup_device(_load(config_path), name, onnxruntime, openvino, _say(json_mode))
    _emit(summary) if json_mode else console.print(f"{name}: agent installed in {summary['venv']}; "
                                                   f"{summary['service']}")


@device_app.command("check")
def device_check(name: str = typer.Argument(...), config_path: Path = ConfigOption,
                 json_mode: bool = JsonOption) -> None:
    """Reachable? Agent version and state, backends with versions, Jetson model and JetPack, free disk."""
    from .records.report import check_table
    from .ship.fleet import check_device

    info = check_device(_load(config_path), name)
    if json_mode:
        _emit(info)
    else:
        console.print(check_table(info))
    if not info["agent_running"] or not all(entry["ok"] for entry in info.get("model_health", {}).values()):
        raise typer.Exit(EXIT_FAILED)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point. A torchrun worker ends through ``distributed.end`` (torch's teardown can abort a finished
    worker); any other process exits as usual."""
    from .train import distributed

    try:
        run_command(argv)
    except SystemExit as exc:
        distributed.end(exc.code)
    distributed.end(0)


def run_command(argv: Optional[list[str]] = None) -> None:
    """Every EdgekitError becomes one line on stderr and its exit code, never a traceback.

    Usage errors are typer's own (exit 2). Anything else raised is a bug (often on a model we have not
    seen): one line naming it and where its traceback was saved, exit 1; ``EDGEKIT_TRACEBACK=1`` re-raises.
    """
    try:
        try:
            app(args=argv)
        except SystemExit as exc:  # typer turns Ctrl-C into a silent exit 130: say what was interrupted
            interrupt = _interrupt_in(exc)
            if interrupt is None:
                raise
            raise interrupt from None
    except EdgekitError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        err.print(escape(exc.line()), highlight=False, soft_wrap=True)
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted; nothing changed on the device unless a job was published (`edgekit status` "
                  "shows it); cached stages kept")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, the traceback in a file
        import os

        if os.environ.get("EDGEKIT_TRACEBACK"):
            raise
        saved = save_traceback()
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        err.print(f"[red]error:[/red] internal error ({type(exc).__name__}: {escape(first)}); this is a bug in "
                  f"edgekit: please report it with {saved}",
                  highlight=False, soft_wrap=True)
        sys.exit(EXIT_FAILED)


def _interrupt_in(exc: BaseException) -> Optional[KeyboardInterrupt]:
    """The KeyboardInterrupt (an ``Interrupted`` when a step named itself) behind an exit, if any."""
    seen = exc.__context__ or exc.__cause__
    for _ in range(8):
        if seen is None or isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


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


if __name__ == "__main__":  # `python -m edgekit.host.cli`: how [train] nproc starts torch.distributed.run's workers
    main()
