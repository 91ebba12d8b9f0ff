"""Fault injection: how many injected faults the agent and the host survived, per scenario (N of N).

Runs the fault suites (tests/test_faults.py for the device: real agent processes, real sshd, a small tmpfs
when root; tests/test_host_faults.py for the host: damaged cache entries, Ctrl-C and SIGKILL of pushes,
a full host disk, unreadable inputs, engines gone behind `current`)
with every trial's outcome logged, then prints one row per scenario and writes benchmarks/results/faults.json.
SSH scenarios share the test device user: run it under the SSH lock, as the tests are:

    flock /tmp/edgekit-ssh.lock .venv/bin/python benchmarks/faults.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.faults import LOG_VARIABLE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only scenarios whose test name matches (pytest -k)")
    parser.add_argument("--name", default="faults", help="results file: benchmarks/results/NAME.json")
    log = Path(tempfile.mkdtemp(prefix="edgekit-faults-")) / "trials.jsonl"
    parser.add_argument("--suite", choices=["all", "device", "host"], default="all", help="which fault suite")
    args = parser.parse_args()
    suites = {"device": ["test_faults.py"], "host": ["test_host_faults.py"],
              "all": ["test_faults.py", "test_host_faults.py"]}[args.suite]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               *(str(ROOT / "tests" / name) for name in suites)]
    if args.k:
        command += ["-k", args.k]
    start, load_before = time.perf_counter(), os.getloadavg()
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, **{LOG_VARIABLE: str(log)}), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    trials = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    table: dict[str, dict] = {}
    for one in trials:
        row = table.setdefault(one["scenario"], {"passed": 0, "failed": 0, "skipped": 0, "failures": []})
        key = {True: "passed", False: "failed", None: "skipped"}[one["ok"]]
        row[key] += 1
        if one["ok"] is False:
            row["failures"].append(one["detail"])
    rows = []
    for scenario, row in table.items():
        ran = row["passed"] + row["failed"]
        verdict = f"{row['passed']} of {ran}" if ran else "skipped"
        rows.append([scenario, verdict, row["skipped"], "; ".join(row["failures"])[:80] or "-"])
    report(args.name, f"fault injection: real agent, real sshd ({seconds:.0f}s, pytest exit {done.returncode})",
           ["scenario", "survived", "skipped", "first failures"], rows,
           {"scenarios": table, "seconds": seconds, "pytest_exit": done.returncode, "pytest_k": args.k,
            "suite": args.suite,
            "load_average": {"start": load_before, "end": os.getloadavg()},
            "pytest_tail": done.stdout.strip().splitlines()[-15:]})
    if done.returncode not in (0, 5):
        print(done.stdout[-3000:])
    sys.exit(0 if all(r["failed"] == 0 for r in table.values()) and table else 1)


if __name__ == "__main__":
    main()
