#!/usr/bin/env python3
"""`make bench`: kasou against plain QEMU on the same guest, in the same run.

Measures start-to-ready (from invoking `kasou vm start` to the guest's KASOU READY line,
vs plain qemu-system-x86_64 with the very command line kasou used), daemon RSS with 0 and
20 running VMs, the daemon's CPU while 20 VMs idle, and `kasou vm list` latency with 20
VMs. Writes docs/BENCHMARKS.md. Figures, not assertions: nothing here fails on a number.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.images.registry import build_image  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import debian_boot as bench_debian  # noqa: E402
import desktop as bench_desktop  # noqa: E402
import isolation as bench_isolation  # noqa: E402
import network as bench_network  # noqa: E402
import storage as bench_storage  # noqa: E402
import tenancy as bench_tenancy  # noqa: E402

READY = re.compile(rb"KASOU READY")
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
FLEET = int(os.environ.get("BENCH_FLEET", "20"))
CPU_OVERCOMMIT = 12


def kasou_script() -> list[str]:
    """The installed console script, run directly (a pyenv shim adds ≈ 80 ms of bash)."""
    exe = Path(sys.executable).with_name("kasou")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kasou"]


class Bench:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="kasou-bench-"))
        self.env = {**os.environ, "KASOU_HOME": str(self.home)}
        self.cli = kasou_script()
        self.daemon: subprocess.Popen[bytes] | None = None

    def run(self, *args: str) -> str:
        return subprocess.run([*self.cli, *args], env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def start_daemon(self) -> None:
        log = open(self.home / "kasoud.log", "ab")  # noqa: SIM115
        # 20 one-vCPU guests on 2 cores: over the default 4 vCPUs per core, so say so.
        self.daemon = subprocess.Popen([*self.cli, "serve", "--cpu-overcommit",
                                        str(CPU_OVERCOMMIT)], env=self.env, stdout=log,
                                       stderr=log, start_new_session=True)
        for _ in range(300):
            if (self.home / "kasou.sock").exists():
                try:
                    self.run("vm", "list")
                    return
                except subprocess.CalledProcessError:
                    pass
            time.sleep(0.1)
        raise SystemExit("daemon did not start")

    def vm(self, name: str) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.run("vm", "show", name, "--json"))
        return data

    def close(self) -> None:
        for rt in self.home.glob("vms/*/runtime.json"):
            with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
                os.kill(json.loads(rt.read_text())["pid"], signal.SIGKILL)
        if self.daemon:
            self.daemon.terminate()
            self.daemon.wait(15)
        shutil.rmtree(self.home, ignore_errors=True)


def wait_ready(log: Path, count: int = 1, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(READY.findall(log.read_bytes())) >= count:
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise SystemExit(f"guest never printed KASOU READY in {log}")


def kasou_start_to_ready(b: Bench, name: str, run: int) -> tuple[float, list[str]]:
    log = b.home / "vms" / str(b.vm(name)["id"]) / "serial.log"
    before = len(READY.findall(log.read_bytes())) if log.exists() else 0
    t0 = time.monotonic()
    subprocess.run([*b.cli, "vm", "start", name], env=b.env, check=True, capture_output=True)
    t1 = wait_ready(log, before + 1)
    rt = json.loads((log.parent / "runtime.json").read_text())
    b.run("vm", "kill", name)
    return t1 - t0, list(rt["argv"])


def plain_qemu_start_to_ready(argv: list[str], vm_dir: str) -> float:
    """The same command line kasou ran, with its run-dir paths moved to a scratch dir."""
    scratch = tempfile.mkdtemp(prefix="plainqemu-")
    args = [a.replace(vm_dir, scratch) for a in argv]
    log = Path(scratch) / "serial.log"
    t0 = time.monotonic()
    subprocess.run(args, check=True, capture_output=True)
    t1 = wait_ready(log)
    pid = int((Path(scratch) / "pid").read_text())
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    shutil.rmtree(scratch, ignore_errors=True)
    return t1 - t0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_to_ready(b: Bench, machine: str) -> dict[str, object]:
    name = f"boot-{machine}"
    b.run("vm", "create", name, "--image", "tiny", "--machine", machine, "--memory", "256M")
    vm_dir = str(b.home / "vms" / str(b.vm(name)["id"]))
    kasou_t, plain_t = [], []
    for i in range(RUNS):   # interleaved A/B so drift hits both sides alike
        k, argv = kasou_start_to_ready(b, name, i)
        kasou_t.append(k)
        plain_t.append(plain_qemu_start_to_ready(argv, vm_dir))
    b.run("vm", "delete", name)
    km, pm = statistics.median(kasou_t), statistics.median(plain_t)
    return {"machine": machine, "kasou": kasou_t, "plain": plain_t, "kasou_median": km,
            "plain_median": pm, "ratio": km / pm}


def fleet(b: Bench) -> dict[str, float]:
    assert b.daemon is not None
    out: dict[str, float] = {"rss0_mib": rss_kib(b.daemon.pid) / 1024}
    for i in range(FLEET):
        b.run("vm", "create", f"f{i:02d}", "--image", "tiny", "--memory", "128M")
        b.run("vm", "start", f"f{i:02d}")
    for i in range(FLEET):
        wait_ready(b.home / "vms" / str(b.vm(f"f{i:02d}")["id"]) / "serial.log", timeout=600)
    time.sleep(5)
    out["rss20_mib"] = rss_kib(b.daemon.pid) / 1024
    c0, t0 = cpu_seconds(b.daemon.pid), time.monotonic()
    time.sleep(30)
    out["idle_cpu_pct"] = 100 * (cpu_seconds(b.daemon.pid) - c0) / (time.monotonic() - t0)
    lat = []
    for _ in range(10):
        t = time.monotonic()
        b.run("vm", "list")
        lat.append(time.monotonic() - t)
    out["list_median_ms"] = 1000 * statistics.median(lat)
    out["list_max_ms"] = 1000 * max(lat)
    out["fleet"] = FLEET
    return out


def write_report(boots: list[dict[str, object]], fl: dict[str, float]) -> str:
    host = json.loads(subprocess.run([*kasou_script(), "host", "info", "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    lines = [
        "# Benchmarks", "",
        f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
        f"{host['cores']} cores, {host['memory_mib']} MiB, QEMU {host['qemu_version']}, "
        f"accelerator {host['accelerator']}, Python {platform.python_version()}.", "",
        "## Start to ready (tiny guest, 256 MiB, 1 vCPU)", "",
        "From invoking `kasou vm start` (the CLI, through the daemon) to the guest's "
        "`KASOU READY` line on the serial log, against plain `qemu-system-x86_64` run with the "
        f"identical command line. {RUNS} interleaved runs each; medians. Target: ratio ≤ 1.05.",
        "", "| machine | kasou (s) | plain QEMU (s) | ratio | kasou runs | plain runs |",
        "|---|---|---|---|---|---|",
    ]
    for r in boots:
        k = ", ".join(f"{x:.2f}" for x in r["kasou"])  # type: ignore[attr-defined]
        p = ", ".join(f"{x:.2f}" for x in r["plain"])  # type: ignore[attr-defined]
        lines.append(f"| {r['machine']} | {r['kasou_median']:.3f} | {r['plain_median']:.3f} | "
                     f"{r['ratio']:.3f} | {k} | {p} |")
    lines += [
        "", "libvirt: not measured here (libvirt is not installed by kasou; DESIGN.md records "
        "≈ 44 s per `virsh create` on these machines from its /dev/kvm re-probe).", "",
        f"## Daemon with {fl['fleet']:.0f} running VMs", "",
        f"Tiny guests, 128 MiB each; the daemon runs with `--cpu-overcommit {CPU_OVERCOMMIT}` "
        "(the default, 4 vCPUs per core, admits 8 one-vCPU guests on 2 cores).", "",
        "| figure | value | target |", "|---|---|---|",
        f"| daemon RSS, 0 VMs | {fl['rss0_mib']:.1f} MiB | |",
        f"| daemon RSS, {fl['fleet']:.0f} VMs | {fl['rss20_mib']:.1f} MiB | |",
        f"| daemon CPU, {fl['fleet']:.0f} idle VMs (30 s) | {fl['idle_cpu_pct']:.2f} % of a core "
        "| < 1 % |",
        f"| `kasou vm list`, {fl['fleet']:.0f} VMs (median of 10) | {fl['list_median_ms']:.0f} ms "
        f"(max {fl['list_max_ms']:.0f} ms) | |", "",
    ]
    return "\n".join(lines)


def core() -> str:
    build_image("tiny")
    b = Bench()
    try:
        b.start_daemon()
        boots = [start_to_ready(b, m) for m in ("microvm", "pc")]
        for r in boots:
            print(f"{r['machine']}: kasou {r['kasou_median']:.3f}s plain {r['plain_median']:.3f}s "
                  f"ratio {r['ratio']:.3f}", flush=True)
        fl = fleet(b)
        print(fl, flush=True)
    finally:
        b.close()
    return write_report(boots, fl)


SECTIONS = {
    "core": core, "isolation": bench_isolation.run, "network": bench_network.run,
    "debian": bench_debian.run, "tenancy": bench_tenancy.run, "storage": bench_storage.run,
    "desktop": bench_desktop.run,
}
FRAGMENTS = ROOT / "docs" / "benchmarks"


def main() -> None:
    """BENCH_SECTIONS=core,network runs some; each section's last result is kept in
    docs/benchmarks/<section>.md and BENCHMARKS.md is rebuilt from all of them."""
    wanted = [w for w in os.environ.get("BENCH_SECTIONS", ",".join(SECTIONS)).split(",") if w]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    FRAGMENTS.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        text = SECTIONS[name]()
        (FRAGMENTS / f"{name}.md").write_text(text.rstrip() + "\n")
        print(text, flush=True)
    parts = [(FRAGMENTS / f"{n}.md").read_text() for n in SECTIONS
             if (FRAGMENTS / f"{n}.md").exists()]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
