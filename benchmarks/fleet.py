"""Fleet rollouts on loopback: N devices, each its own sshd, its own user (when run as root) and agent root.

    python benchmarks/fleet.py [--devices 20] [--trials 2] [--overhead-only]

Measures, on a fleet from an Ansible inventory:
- the host's own overhead per device at --max-parallel 1: each device's push time on the host minus its job
  time on the device (first to last event of the job), and the rollout's wall time minus the devices' job
  times, per device; with how many times the host optimised (target: once per rollout) and how many times
  each blob went to each device (target: once; a second rollout uploads nothing);
- a canary that cannot meet [budget] halting the rollout: devices left exactly as they were (target: 20/20,
  0 devices of later waves touched) in every trial;
- the rollback of one wave, then of the rest: every device back on the engine it served before (20/20);
- a host killed (SIGKILL) halfway through a rollout, then `rollout resume`: no finished device pushed again,
  the job in flight followed rather than published again, the rest pushed (each device exactly one new job).
The devices share this machine's cores, so wall times say little; the host's part is what is judged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import EDGEKIT, TINY_PROJECT  # noqa: E402
from tests.fleet_lab import attach_agents, engine_of, job_count  # noqa: E402
from tests.sshd import SSHServer, client_home, device_user, free_port  # noqa: E402

DEVICE_ROOT = ".edgekit-fleet"


def inventory(devices: list[dict], venv: str, precision: str) -> str:
    hosts = "\n".join(f"{d['name']} ansible_port={d['server'].port} ansible_user={d['user']}" for d in devices)
    return (f"[fleet]\n{hosts}\n\n[fleet:vars]\nansible_host=127.0.0.1\nedgekit_backend=onnxruntime\n"
            f"edgekit_root=~/{DEVICE_ROOT}\nedgekit_venv={venv}\nedgekit_python=/usr/bin/python3\n"
            f"edgekit_precision={precision}\n")


def cli(project: Path, *args: str) -> None:
    result = subprocess.run([EDGEKIT, *args], cwd=project, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"edgekit {' '.join(args)} failed:\n{result.stderr}")


class Counters:
    """How often the host optimised and which blobs it sent to which device (wrapped in this process)."""

    def __init__(self) -> None:
        import edgekit.host.optimize as optimize_package
        import edgekit.host.ship.push as push_module
        from edgekit.host.ship.transports.client import SpoolClient

        self.optimize_calls, self.uploads = 0, []
        # the step that sends one blob: send_part (upload_all commits them together), upload in older code
        step = "send_part" if "send_part" in vars(SpoolClient) else "upload"
        real_optimize, real_send = optimize_package.optimize, getattr(SpoolClient, step)

        def optimize(*args, **kwargs):
            self.optimize_calls += 1
            return real_optimize(*args, **kwargs)

        def send(client, sha, path, progress):
            self.uploads.append((client.device_name, sha))
            return real_send(client, sha, path, progress)

        optimize_package.optimize = push_module.optimize = optimize
        setattr(SpoolClient, step, send)

    def reset(self) -> None:
        self.optimize_calls, self.uploads = 0, []


class Phases:
    """Where the host's time per device goes (at --max-parallel 1 the devices run one after the other): each
    step of a push wrapped with a clock in this process, summed per rollout."""

    STEPS = {
        "edgekit.host.ship.transports.ssh:SSHTransport.__init__": "SSH connect + host-key check + SFTP",
        "edgekit.host.ship.transports.ssh:SSHTransport.ensure_agent": "ensure_agent",
        "edgekit.host.ship.transports.ssh:SSHTransport.status": "device status query",
        "edgekit.host.ship.transports.client:SpoolClient.snapshot": "device status query",
        "edgekit.host.ship.push:typed_files_for": "manifest + pre-upload checks (host)",
        "edgekit.host.ship.push:make_manifest": "manifest + pre-upload checks (host)",
        "edgekit.host.ship.push:failing_alternatives": "manifest + pre-upload checks (host)",
        "edgekit.host.ship.push:load_or_create_key": "key + history open",
        "edgekit.host.ship.push:History": "key + history open",
        "edgekit.host.ship.transports.client:SpoolClient.missing": "missing-blob check",
        "edgekit.host.ship.transports.client:SpoolClient.make_room": "make_room (gc)",
        "edgekit.host.ship.transports.client:SpoolClient.upload": "upload + commit",
        "edgekit.host.ship.transports.client:SpoolClient.upload_all": "upload + commit",
        "edgekit.host.ship.transports.client:SpoolClient.publish": "publish",
        "edgekit.host.ship.push:follow": "follow (incl. the job)",
        "edgekit.host.ship.push:store_run": "history + report write",
        "edgekit.host.ship.transports.client:SpoolClient.close": "close",
    }

    def __init__(self) -> None:
        import importlib

        self.seconds: dict[str, float] = {}
        for spec, label in self.STEPS.items():
            module_name, _, attr = spec.partition(":")
            owner: object = importlib.import_module(module_name)
            *path, name = attr.split(".")
            for part in path:
                owner = getattr(owner, part)
            if name in vars(owner):  # steps that this version of the code has
                setattr(owner, name, self._clocked(getattr(owner, name), label))

    def _clocked(self, function, label: str):
        import functools

        if isinstance(function, type):
            phases = self

            class Clocked(function):  # a class (History): its construction is the step
                def __init__(self, *args, **kwargs):
                    start = time.perf_counter()
                    try:
                        super().__init__(*args, **kwargs)
                    finally:
                        phases.seconds[label] = phases.seconds.get(label, 0.0) + time.perf_counter() - start

            return Clocked

        @functools.wraps(function)
        def clocked(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        return clocked

    def take(self, devices: int) -> dict[str, float]:
        """Seconds per device in each step since the last take."""
        taken = {label: round(seconds / devices, 4) for label, seconds in self.seconds.items()}
        self.seconds = {}
        return taken


def rollout(project: Path, names: list[str], waves: str, parallel: int):
    from edgekit.host.config import load_config
    from edgekit.host.ship.rollout import start_rollout

    config = load_config(project / "deploy.toml")
    start = time.perf_counter()
    record = start_rollout(config, names, {"group": "fleet"}, waves, parallel, 0, lambda message: None,
                           lambda name, event: None)
    return record, time.perf_counter() - start


def rollback(project: Path, names: list[str], wave: int | None):
    from edgekit.host.config import load_config
    from edgekit.host.ship.rollout import rollback_fleet

    config = load_config(project / "deploy.toml")
    return rollback_fleet(config, names, "fleet", None, wave, 4, lambda name, event: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--reuse", type=Path, help="an earlier run's project: its checkpoint and optimisation cache "
                        "are copied, and an agent venv already on the first device user is kept (a loaded machine)")
    parser.add_argument("--reinstall-agent", action="store_true", help="with --reuse: set the agent up again "
                        "(this checkout's agent, when the venv holds another version's)")
    parser.add_argument("--overhead-only", action="store_true", help="only the two rollouts that measure the host's "
                        "time per device (written to results/fleet_overhead.json); no halt/rollback/resume trials")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-fleet-"))
    home = client_home(work)
    os.environ["OMP_NUM_THREADS"] = "2"
    (home / "edgekit").mkdir()
    devices, per_user = [], os.geteuid() == 0
    try:
        for index in range(1, args.devices + 1):
            user, user_home = device_user(f"edgekit-f{index:02d}") if per_user else device_user()
            shutil.rmtree(user_home / DEVICE_ROOT, ignore_errors=True)
            server = SSHServer(work / "sshd" / f"f{index:02d}", free_port(), user)
            server.start(home / ".ssh" / "id_ed25519.pub")
            devices.append({"name": f"f{index:02d}", "user": user, "home": user_home, "server": server,
                            "root": user_home / DEVICE_ROOT})
        with open(home / "edgekit" / "known_hosts", "a") as known:
            known.write("".join(d["server"].known_hosts_line() + "\n" for d in devices))
        first_home = devices[0]["home"]
        os.chmod(first_home, 0o755)  # the other device users run the agent from the first one's venv
        venv = str(first_home / ".edgekit-fleet-venv")
        project = work / "project"
        project.mkdir()
        (project / "deploy.toml").write_text(TINY_PROJECT + '\n[fleet]\ninventory = "hosts.ini"\n')
        (project / "hosts.ini").write_text(inventory(devices, venv, "fp32"))
        cli(project, "data", "digits", "data")
        if args.reuse:
            shutil.copytree(args.reuse / "runs", project / "runs")
            shutil.copytree(args.reuse / ".edgekit" / "cache", project / ".edgekit" / "cache")
        else:
            cli(project, "train")
        cli(project, "optimize")  # so the rollouts' one optimisation is the cached one: their time is the fleet's
        fresh = args.reinstall_agent or not (args.reuse and Path(venv, "bin", "edgekit-agent").exists())
        if fresh:
            cli(project, "device", "setup", devices[0]["name"], "--no-openvino")
        attach_agents(project, dict(os.environ), [d["name"] for d in devices[int(fresh):]])
        results = measure(project, devices, venv, 0 if args.overhead_only else args.trials)
    finally:
        for device in devices:
            stop_agent(device["root"])
            device["server"].stop()
    rows = [["host overhead per device, median (s)", results["overhead_median_s"]],
            ["host overhead per device, max (s)", results["overhead_max_s"]],
            ["same, repeat rollout (nothing to upload), median (s)", results["repeat_overhead_median_s"]],
            ["rollout wall - device jobs, per device (s)", results["rollout_overhead_per_device_s"]],
            ["device job time, median (s)", results["job_median_s"]],
            ["optimisations per rollout", results["optimize_calls"]],
            ["blob uploads to one device, max (1st rollout)", results["max_uploads_per_blob_and_device"]],
            ["blobs uploaded by a 2nd unchanged rollout", results["second_rollout_uploads"]]]
    if not args.overhead_only:
        rows += [
            ["halt: devices as they were / trials", f"{results['halt_correct']} / {results['halt_trials']}"],
            ["halt: later-wave devices touched (all trials)", results["halt_later_touched"]],
            ["rollback of a wave, then the rest: devices right", f"{results['rollback_correct']}"],
            ["host killed mid-rollout, resumed: finished devices pushed again",
             [r["finished_pushed_again"] for r in results["resume"]]],
            ["same: devices with exactly one new job / done",
             [f"{r['devices_with_one_new_job']} / {r['devices_done']}" for r in results["resume"]]]]
    report("fleet_overhead" if args.overhead_only else "fleet",
           f"edgekit fleet rollouts: {len(devices)} loopback devices "
           f"({'one user each' if per_user else 'one shared user'})", ["measure", "value"], rows, results)


def measure(project: Path, devices: list[dict], venv: str, trials: int) -> dict:
    names = [d["name"] for d in devices]
    counters, phases = Counters(), Phases()
    record, wall = rollout(project, names, "1,10%,100%", 1)
    first_phases = phases.take(len(names))
    assert record.data["status"] == "done", record.data
    entries = record.devices
    overheads = [e["host_s"] - e["job_s"] for e in entries.values()]
    jobs = [e["job_s"] for e in entries.values()]
    per_blob = {}
    for key in counters.uploads:
        per_blob[key] = per_blob.get(key, 0) + 1
    first = {"optimize_calls": counters.optimize_calls, "max_uploads_per_blob_and_device": max(per_blob.values()),
             "devices_uploaded_to": len({device for device, _ in counters.uploads})}
    counters.reset()
    second, _ = rollout(project, names, "1,10%,100%", 1)
    assert second.data["status"] == "done", second.data
    repeat_phases = phases.take(len(names))
    repeat = [e["host_s"] - e["job_s"] for e in second.devices.values()]
    for label, taken, entries_of in (("first", first_phases, entries), ("repeat", repeat_phases, second.devices)):
        taken["follow beyond the job"] = round(taken.get("follow (incl. the job)", 0.0) - statistics.mean(
            e["job_s"] for e in entries_of.values()), 4)
        print(f"host seconds per device, {label} rollout: " + json.dumps(taken))
    results = dict(first, overhead_median_s=statistics.median(overheads), overhead_max_s=max(overheads),
                   repeat_overhead_median_s=statistics.median(repeat),
                   rollout_wall_s=wall, rollout_overhead_per_device_s=(wall - sum(jobs)) / len(jobs),
                   job_median_s=statistics.median(jobs), second_rollout_uploads=len(counters.uploads),
                   phases_per_device_s={"first": first_phases, "repeat": repeat_phases},
                   per_device=entries)
    if trials:
        results.update(halt_trials(project, devices, trials))
        results.update(rollback_trials(project, devices, venv, trials))
        results.update(resume_trials(project, devices, trials))
    return results


def resume_trials(project: Path, devices: list[dict], trials: int) -> dict:
    """`edgekit push --waves` in a process of its own, SIGKILLed once half the fleet is done; then resumed."""
    from edgekit.host.config import load_config
    from edgekit.host.ship.rollout import resume_rollout

    folder = project / ".edgekit" / "rollouts"
    outcomes = []
    for _ in range(trials):
        before = {d["name"]: job_count(d["root"]) for d in devices}
        known = set(folder.glob("*.json")) if folder.is_dir() else set()
        host = subprocess.Popen([EDGEKIT, "push", "--group", "fleet", "--waves", "1,10%,100%", "--max-parallel", "1"],
                                cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        states = {}
        try:
            while host.poll() is None:
                new = set(folder.glob("*.json")) - known if folder.is_dir() else set()
                if new:
                    try:
                        states = {n: e["state"] for n, e in json.loads(max(new).read_text())["devices"].items()}
                    except (ValueError, OSError):
                        pass
                    if sum(state == "done" for state in states.values()) >= len(devices) // 2:
                        host.kill()
                        break
                time.sleep(0.05)
        finally:
            host.kill()
            host.wait()
        at_kill = {d["name"]: job_count(d["root"]) for d in devices}
        record = resume_rollout(load_config(project / "deploy.toml"), None, lambda message: None,
                                lambda name, event: None)
        after = {d["name"]: job_count(d["root"]) for d in devices}
        finished = [n for n, state in states.items() if state == "done"]
        outcomes.append({
            "killed_with_done": len(finished), "killed_in_flight": [n for n, st in states.items()
                                                                    if st in ("publishing", "running")],
            "status_after_resume": record.data["status"],
            "finished_pushed_again": sum(after[n] != at_kill[n] for n in finished),
            "devices_with_one_new_job": f"{sum(after[n] == before[n] + 1 for n in before)}/{len(before)}",
            "devices_done": f"{sum(e['state'] == 'done' for e in record.devices.values())}/{len(before)}"})
    return {"resume": outcomes}


def halt_trials(project: Path, devices: list[dict], trials: int) -> dict:
    config = project / "deploy.toml"
    original = config.read_text()
    correct, touched = [], 0
    for _ in range(trials):
        before = {d["name"]: (job_count(d["root"]), engine_of(d["root"])) for d in devices}
        config.write_text(original + "\n[budget]\nmax_median_ms = 0.0001\n")  # no device can meet it
        try:
            record, _ = rollout(project, list(before), "1,10%,100%", 4)
        finally:
            config.write_text(original)
        canary = record.data["waves"][0][0]
        right = 0
        for device in devices:
            jobs, engine = job_count(device["root"]), engine_of(device["root"])
            if device["name"] == canary:
                right += jobs == before[canary][0] + 1 and engine == before[canary][1]
            else:
                right += (jobs, engine) == before[device["name"]]
                touched += (jobs, engine) != before[device["name"]]
        correct.append(right if record.data["status"] == "halted" else 0)
    return {"halt_trials": trials, "halt_correct": correct, "halt_later_touched": touched}


def rollback_trials(project: Path, devices: list[dict], venv: str, trials: int) -> dict:
    names = [d["name"] for d in devices]
    correct = []
    for _ in range(trials):
        before = {d["name"]: engine_of(d["root"]) for d in devices}
        (project / "hosts.ini").write_text(inventory(devices, venv, "int8"))
        record, _ = rollout(project, names, "1,10%,100%", 4)
        after = {d["name"]: engine_of(d["root"]) for d in devices}
        last = len(record.data["waves"])
        rollback(project, names, last)
        mid = {d["name"]: engine_of(d["root"]) for d in devices}
        wave_of = {name: entry["wave"] for name, entry in record.devices.items()}
        right_wave = sum(mid[n] == (before[n] if wave_of[n] == last else after[n]) and after[n] != before[n]
                         for n in names)
        rollback(project, names, None)
        right_all = sum(engine_of(d["root"]) == before[d["name"]] for d in devices)
        correct.append({"wave": f"{right_wave}/{len(names)}", "all": f"{right_all}/{len(names)}"})
    return {"rollback_correct": correct}


def stop_agent(root: Path) -> None:
    """The agent this benchmark started in ``root`` (its pid from agent.json), and nothing else."""
    try:
        pid = json.loads((root / "agent.json").read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
    except (OSError, KeyError, ValueError):
        pass


if __name__ == "__main__":
    main()
