"""`make bench`: debian first boot to SSH reachable, kasou against plain QEMU.

A first boot of a cloud image: a freshly created VM (new overlay, new instance-id) with a
key given by --ssh-key and a user-mode forward to port 22, timed from `kasou vm start` to
the first successful `ssh debian@127.0.0.1 true` with that key (cloud-init has then made
the host keys, the user and installed the key). Against plain `qemu-system-x86_64` with
the identical command line kasou ran, on a fresh overlay of the same image and a copy of
the same seed. Runs are interleaved A/B; the host's load average is reported with them,
since the machine may be shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.images.registry import build_image  # noqa: E402

RUNS = int(os.environ.get("BENCH_DEBIAN_RUNS", "2"))
TIMEOUT = float(os.environ.get("BENCH_DEBIAN_TIMEOUT", "1200"))
MEMORY, VCPUS = "512M", "2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_ok(key: Path, port: int) -> bool:
    r = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
                        "debian@127.0.0.1", "true"], capture_output=True, timeout=60,
                       check=False)
    return r.returncode == 0


def until_ssh(key: Path, port: int, t0: float) -> float:
    deadline = t0 + TIMEOUT
    while time.monotonic() < deadline:
        if ssh_ok(key, port):
            return time.monotonic() - t0
        time.sleep(0.5)
    raise SystemExit(f"no SSH on port {port} after {TIMEOUT:.0f} s")


class Daemon:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="kasou-bench-debian-"))
        self.env = {**os.environ, "KASOU_HOME": str(self.home)}
        self.env.pop("KASOU_URL", None)
        self.proc: subprocess.Popen[bytes] | None = None

    def kasou(self, *args: str) -> str:
        return subprocess.run([sys.executable, "-m", "kasou", *args], env=self.env,
                              check=True, capture_output=True, text=True).stdout

    def start(self) -> None:
        with open(self.home / "kasoud.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "kasou", "serve"], env=self.env,
                                         stdout=log, stderr=log, start_new_session=True)
        for _ in range(300):
            with contextlib.suppress(subprocess.CalledProcessError):
                self.kasou("vm", "list")
                return
            time.sleep(0.1)
        raise SystemExit("daemon did not start")

    def close(self) -> None:
        for rt in self.home.glob("vms/*/runtime.json"):
            with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
                os.kill(json.loads(rt.read_text())["pid"], signal.SIGKILL)
        if self.proc:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        shutil.rmtree(self.home, ignore_errors=True)


def kasou_first_boot(d: Daemon, key: Path, i: int) -> tuple[float, float, list[str], Path]:
    """(create s, start-to-ssh s, the argv kasou ran, the VM's run dir)."""
    name, port = f"deb{i}", free_port()
    t0 = time.monotonic()
    d.kasou("vm", "create", name, "--image", "debian", "--memory", MEMORY, "--vcpus", VCPUS,
            "--ssh-key", f"{key}.pub", "--forward", f"{port}:22")
    created = time.monotonic() - t0
    t1 = time.monotonic()
    d.kasou("vm", "start", name)
    boot = until_ssh(key, port, t1)
    vm = json.loads(d.kasou("vm", "show", name, "--json"))
    run_dir = d.home / "vms" / vm["id"]
    argv = json.loads((run_dir / "runtime.json").read_text())["argv"]
    d.kasou("vm", "kill", name)
    return created, boot, argv, run_dir


def plain_first_boot(argv: list[str], run_dir: Path, image_disk: str, key: Path) -> float:
    """The same command line, its run-dir files in a scratch dir: a fresh overlay of the
    image's disk and a copy of the VM's seed, so this is a first boot too."""
    scratch = Path(tempfile.mkdtemp(prefix="plainqemu-debian-"))
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        image_disk, str(scratch / "root.qcow2")], check=True)
        shutil.copy(run_dir / "seed.iso", scratch / "seed.iso")
        args = [a.replace(str(run_dir), str(scratch)) for a in argv]
        port = next(int(a.split("hostfwd=tcp:127.0.0.1:")[1].split("-")[0])
                    for a in args if "hostfwd=tcp:127.0.0.1:" in a)
        t0 = time.monotonic()
        subprocess.run(args, check=True, capture_output=True)
        boot = until_ssh(key, port, t0)
        os.kill(int((scratch / "pid").read_text()), signal.SIGKILL)
        time.sleep(0.5)
        return boot
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run() -> str:
    image = build_image("debian")
    assert image.disk is not None
    d = Daemon()
    keydir = Path(tempfile.mkdtemp(prefix="kasou-bench-key-"))
    key = keydir / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    rows: list[tuple[float, float, float, str]] = []
    try:
        d.start()
        for i in range(RUNS):
            load0 = os.getloadavg()[0]
            created, k, argv, run_dir = kasou_first_boot(d, key, i)
            p = plain_first_boot(argv, run_dir, image.disk, key)
            rows.append((created, k, p, f"{load0:.1f}-{os.getloadavg()[0]:.1f}"))
            print(f"debian run {i}: create {created:.2f}s kasou {k:.1f}s plain {p:.1f}s",
                  flush=True)
    finally:
        d.close()
        shutil.rmtree(keydir, ignore_errors=True)
    return report(image.os, rows)


def report(os_name: str, rows: list[tuple[float, float, float, str]]) -> str:
    km = statistics.median(r[1] for r in rows)
    pm = statistics.median(r[2] for r in rows)
    cm = statistics.median(r[0] for r in rows)
    lines = [
        "## debian: first boot to SSH reachable", "",
        f"Image: {os_name}. A freshly created VM ({MEMORY}, {VCPUS} vCPUs, machine pc, TCG): "
        "from `kasou vm start` to the first successful `ssh debian@127.0.0.1 true` through "
        "a `--forward` to port 22, with the key given by `--ssh-key` (so cloud-init has made "
        "the host keys and the user and installed the key). Plain QEMU: the identical command "
        "line on a fresh overlay and a copy of the seed. "
        f"{len(rows)} interleaved runs; medians.", "",
        "| | kasou (s) | plain QEMU (s) | ratio |", "|---|---|---|---|",
        f"| start to SSH login | {km:.1f} | {pm:.1f} | {km / pm:.3f} |",
        f"| `kasou vm create` (overlay + seed) | {cm:.2f} | | |", "",
        "| run | kasou (s) | plain (s) | load average (1 min, before-after) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {i} | {r[1]:.1f} | {r[2]:.1f} | {r[3]} |" for i, r in enumerate(rows)]
    lines += ["", "Under TCG the guest's first boot is dominated by cloud-init's Python "
              "(four stages) and systemd; both sides pay it alike. The host's load average "
              "is shown because these figures move with it.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
