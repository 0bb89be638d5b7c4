"""Isolation and metrics figures for `make bench` (bench/run.py calls run()).

1. The daemon's CPU and RSS while it samples 20 running VMs every 2 s, against the same
   daemon and the same 20 VMs with sampling pushed out to once an hour (the VMs outlive
   daemon restarts, so both runs see the very same guests). Target: sampling < 1% of a core.
2. The stored size of one VM's metrics for a day, at 2 s and at 5 s, for an idle-like and a
   noisy (busy, random) VM, through the real recorder and SQLite table.
3. Start to ready with and without the sandbox (same guest, same daemon options otherwise).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.metrics.recorder import Recorder  # noqa: E402
from kasou.metrics.series import UNKNOWN  # noqa: E402
from kasou.metrics.service import VM_KINDS  # noqa: E402
from kasou.store.metrics import MetricsStore  # noqa: E402
from kasou.store.sqlite import SQLiteStore  # noqa: E402

FLEET = int(os.environ.get("BENCH_FLEET", "20"))
WINDOW = float(os.environ.get("BENCH_SAMPLING_WINDOW", "60"))
READY = re.compile(rb"KASOU READY")


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("kasou")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kasou"]


class Daemon:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "KASOU_HOME": str(home)}
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *args: str) -> str:
        r = subprocess.run([*_cli(), *args], env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"kasou {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def start(self, *opts: str) -> None:
        log = open(self.home / "kasoud.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([*_cli(), "serve", *opts], env=self.env, stdout=log,
                                     stderr=log, start_new_session=True)
        for _ in range(300):
            if (self.home / "kasou.sock").exists():
                with contextlib.suppress(SystemExit):
                    self.run("vm", "list")
                    return
            time.sleep(0.1)
        raise SystemExit("daemon did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def cpu_rss(self, window: float) -> tuple[float, float]:
        assert self.proc is not None
        pid = self.proc.pid
        c0, t0 = _cpu_s(pid), time.monotonic()
        time.sleep(window)
        cpu = 100 * (_cpu_s(pid) - c0) / (time.monotonic() - t0)
        return cpu, _rss_mib(pid)


def _cpu_s(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _wait_ready(log: Path, timeout: float = 600, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and len(READY.findall(log.read_bytes())) >= count:
            return
        time.sleep(0.05)
    raise SystemExit(f"no KASOU READY in {log}")


def _kill_vms(home: Path) -> None:
    import json
    for rt in home.glob("vms/*/runtime.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(rt.read_text())["pid"]), signal.SIGKILL)


def sampling_cost() -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="kasou-bench-isol-"))
    d = Daemon(home)
    try:
        d.start("--metrics-interval", "2", "--cpu-overcommit", "16")
        for i in range(FLEET):
            d.run("vm", "create", f"s{i:02d}", "--image", "tiny", "--memory", "128M")
            d.run("vm", "start", f"s{i:02d}")
        for log in home.glob("vms/*/serial.log"):
            _wait_ready(log)
        time.sleep(10)
        on_cpu, on_rss = d.cpu_rss(WINDOW)
        d.stop()
        d.start("--metrics-interval", "3600", "--cpu-overcommit", "16")
        time.sleep(10)
        off_cpu, off_rss = d.cpu_rss(WINDOW)
        return {"on_cpu": on_cpu, "on_rss": on_rss, "off_cpu": off_cpu, "off_rss": off_rss}
    finally:
        d.stop()
        _kill_vms(home)
        shutil.rmtree(home, ignore_errors=True)


def _day(interval_s: int, noisy: bool) -> int:
    """Bytes one VM's metrics take for a day at this interval (all three tiers)."""
    rng = random.Random(5)
    tmp = Path(tempfile.mkdtemp(prefix="kasou-bench-metrics-"))
    try:
        store = MetricsStore(SQLiteStore(tmp / "kasou.db"))
        rec = Recorder(store)
        cpu = rd = wr = rops = wops = 0
        rss, free = 170 << 20, 180 << 20
        t0 = 1_700_000_000_000
        for i in range(86400 // interval_s):
            if noisy:
                cpu += int(interval_s * 1e9 * rng.uniform(0.05, 0.9))
                rss += rng.randint(-2, 2) << 20
                free = max(0, free + (rng.randint(-512, 512) << 10))
                burst = rng.random() < 0.3
                rd += rng.randint(0, 4 << 20) if burst else 0
                wr += rng.randint(0, 2 << 20) if burst else 0
                rops += rng.randint(0, 300) if burst else 0
                wops += rng.randint(0, 150) if burst else 0
            else:
                cpu += int(interval_s * 1e9 * 0.007) + rng.randint(0, 10_000_000)
            sample = (t0 + i * interval_s * 1000, cpu, rss, 256 << 20, 230 << 20, free,
                      free + (10 << 20), rd, wr, rops, wops, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
            rec.add("vm", "default", sample, VM_KINDS)
            if i % 30 == 0:
                rec.flush()
        rec.flush()
        return store.bytes_used("vm")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _start_to_ready(sandbox: bool, runs: int = 3) -> float:
    home = Path(tempfile.mkdtemp(prefix="kasou-bench-sbx-"))
    d = Daemon(home)
    times = []
    try:
        d.start("--sandbox" if sandbox else "--no-sandbox")
        d.run("vm", "create", "b", "--image", "tiny", "--memory", "256M")
        for run in range(runs):
            t0 = time.monotonic()
            d.run("vm", "start", "b")
            _wait_ready(next(home.glob("vms/*/serial.log")), 120, run + 1)
            times.append(time.monotonic() - t0)
            d.run("vm", "kill", "b")
        return statistics.median(times)
    finally:
        d.stop()
        _kill_vms(home)
        shutil.rmtree(home, ignore_errors=True)


def run() -> str:
    cost = sampling_cost()
    print("sampling", cost, flush=True)
    sizes = {(i, n): _day(i, n) for i in (2, 5) for n in (False, True)}
    print("sizes", sizes, flush=True)
    boot = {s: _start_to_ready(s) for s in (True, False)}
    print("sandbox start", boot, flush=True)
    kib = {k: v / 1024 for k, v in sizes.items()}
    lines = [
        "## Isolation and metrics", "",
        f"Daemon sampling {FLEET} running tiny VMs (128 MiB) every 2 s (per VM: /proc, QMP "
        "query-blockstats every round, query-balloon and guest-stats every ≈ 10 s; host "
        "totals), against the same daemon and VMs with sampling once an hour; "
        f"{WINDOW:.0f} s windows.", "",
        "| figure | sampling every 2 s | sampling hourly | target |", "|---|---|---|---|",
        f"| daemon CPU | {cost['on_cpu']:.2f} % of a core | {cost['off_cpu']:.2f} % | "
        "< 1 % for sampling |",
        f"| daemon RSS | {cost['on_rss']:.1f} MiB | {cost['off_rss']:.1f} MiB | |", "",
        f"Sampling itself costs ≈ {cost['on_cpu'] - cost['off_cpu']:.2f} % of a core.", "",
        "Stored metrics of one VM for a day (all three tiers: every sample, 1-minute and "
        "1-hour rollups; SQLite payload plus keys):", "",
        "| interval | idle-like VM | busy VM (random figures) | a week at full rate (busy) |",
        "|---|---|---|---|",
    ]
    for interval in (2, 5):
        lines.append(f"| {interval} s | {kib[(interval, False)]:.0f} KiB | "
                     f"{kib[(interval, True)]:.0f} KiB | "
                     f"{7 * kib[(interval, True)] / 1024:.1f} MiB |")
    lines += [
        "", "Start to ready of a tiny guest (median of 3, `kasou vm start` to KASOU READY):", "",
        "| sandbox (unprivileged QEMU, seccomp, descriptors passed) | no sandbox (root, "
        "-daemonize) |", "|---|---|",
        f"| {boot[True]:.2f} s | {boot[False]:.2f} s |", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
