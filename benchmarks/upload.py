"""Upload rate over SSH: edgekit's SFTP upload against `scp` of the same file to the same server.

    python benchmarks/upload.py [--mb 50] [--rounds 5]

Starts a real OpenSSH server on 127.0.0.1 (as the tests do), then alternates edgekit's upload of a
random blob into the device's content store with `scp` of the same file, several rounds; reports
median seconds and MB/s, and the ratio (target, issue 3: edgekit ≥ 0.8 of scp's rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgekit.device.contract.manifest import sha256_file  # noqa: E402
from edgekit.host.config import DeviceSection  # noqa: E402
from edgekit.host.ship.transports.connect import resolve, scan_host_key, trust_host_key  # noqa: E402
from edgekit.host.ship.transports.ssh import SSHTransport  # noqa: E402
from tests.sshd import SSHServer, client_home, device_user, free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgekit-upload-"))
    home = client_home(work)
    user, _ = device_user()
    server = SSHServer(work / "sshd", free_port(), user).start(home / ".ssh" / "id_ed25519.pub")
    try:
        destination = resolve("127.0.0.1", user, server.port)
        trust_host_key(destination, scan_host_key(destination))
        known_hosts = home / "edgekit" / "known_hosts"
        blob = work / "blob"
        blob.write_bytes(os.urandom(args.mb * 1024 * 1024))
        sha = sha256_file(blob)
        device = DeviceSection(host="127.0.0.1", port=server.port, user=user, root="~/.edgekit-upload-bench")
        transport = SSHTransport("bench", device)
        transport.ensure_layout()
        part = f"blobs/{sha}.bench.part"
        scp = ["scp", "-q", "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-i", str(home / ".ssh" / "id_ed25519"), "-P", str(server.port), str(blob),
               f"{user}@127.0.0.1:.edgekit-upload-bench/scp.bin"]
        times: dict[str, list[float]] = {"edgekit (paramiko SFTP)": [], "scp (OpenSSH)": []}
        for _ in range(args.rounds):
            transport.fs.remove(part)
            start = time.perf_counter()
            transport.fs.send(part, blob, 0, lambda n: None)
            times["edgekit (paramiko SFTP)"].append(time.perf_counter() - start)
            start = time.perf_counter()
            subprocess.run(scp, check=True)
            times["scp (OpenSSH)"].append(time.perf_counter() - start)
        transport.run(f"rm -rf {transport.root}")
        transport.close()
    finally:
        server.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    rate = {name: args.mb / seconds for name, seconds in medians.items()}
    ratio = rate["edgekit (paramiko SFTP)"] / rate["scp (OpenSSH)"]
    rows = [[name, f"{medians[name]:.3f}", f"{rate[name]:.0f}", f"{min(times[name]):.3f}", f"{max(times[name]):.3f}"]
            for name in times]
    report("upload", f"{args.mb} MB to 127.0.0.1 over SSH, {args.rounds} alternating rounds (median)",
           ["transfer", "median s", "MB/s", "min s", "max s"], rows,
           {"args": vars(args), "seconds": times, "median_s": medians, "mb_per_s": rate, "ratio_vs_scp": ratio,
            "targets_met": {"at_least_0.8_of_scp": ratio >= 0.8}})
    print(f"{'PASS' if ratio >= 0.8 else 'MISS'}  edgekit/scp rate ratio {ratio:.2f} (target ≥ 0.8)")


if __name__ == "__main__":
    main()
