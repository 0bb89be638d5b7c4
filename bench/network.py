"""Network figures for `make bench`: VM-to-VM TCP throughput on a kasou host network, and
the latency the per-VM firewall adds with 100 rules against 1, on the same two guests in
one run (A/B interleaved, rules changed live between rounds).

Everything runs in a network namespace of its own (the daemon, its bridge, QEMU): no packet
leaves this machine. busybox has no iperf: throughput is `dd | nc` timed by the receiver
on its own clock (first byte to last), latency is busybox `ping`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.cli.client import Client  # noqa: E402
from kasou.paths import Layout  # noqa: E402

MIB = int(os.environ.get("BENCH_NET_MIB", "4"))
ROUNDS = int(os.environ.get("BENCH_NET_ROUNDS", "3"))
PINGS = int(os.environ.get("BENCH_NET_PINGS", "40"))
SUBNET, A_IP, B_IP = "10.254.7.0/24", "10.254.7.10", "10.254.7.20"
_tags = itertools.count(1)


class Env:
    def __init__(self) -> None:
        self.ns = f"kb-{uuid.uuid4().hex[:6]}"
        self.home = Path(tempfile.mkdtemp(prefix="kasou-bench-net-"))
        self.env = {**os.environ, "KASOU_HOME": str(self.home)}
        self.env.pop("KASOU_URL", None)
        self.daemon: subprocess.Popen[bytes] | None = None

    def kasou(self, *args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "kasou", *args, "--json"], env=self.env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"kasou {' '.join(args)}: {out.stderr.strip()}")
        return json.loads(out.stdout) if out.stdout.strip() else None

    def plain(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "kasou", *args], env=self.env, check=True,
                       capture_output=True)

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
        with open(self.home / "kasoud.log", "ab") as log:
            self.daemon = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, "-m", "kasou", "serve"],
                env=self.env, stdout=log, stderr=log, start_new_session=True)
        for _ in range(300):
            if subprocess.run([sys.executable, "-m", "kasou", "vm", "list"], env=self.env,
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit("daemon did not start")

    def close(self) -> None:
        if self.daemon:
            self.daemon.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.daemon.wait(15)
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True)
        for pid in out.stdout.split():      # QEMU and dnsmasq this run started
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.ns], check=False)
        shutil.rmtree(self.home, ignore_errors=True)


def guest(vm: dict[str, Any], command: str, timeout: float = 300) -> str:
    tag = f"{os.getpid()}x{next(_tags)}"
    marker = f"KDONE{tag}"
    out = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(vm["console"]))
        s.settimeout(0.2)
        s.sendall(f'{command}; echo "KDO""NE{tag}"\n'.encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and marker.encode() not in out:
            with contextlib.suppress(TimeoutError):
                out += s.recv(65536)
    return out.decode(errors="replace")


def boot(e: Env, name: str, ip: str) -> dict[str, Any]:
    e.plain("vm", "create", name, "--image", "tiny", "--network", "bench", "--ip", ip)
    e.plain("vm", "start", name)
    vm: dict[str, Any] = e.kasou("vm", "show", name)
    log = Path(vm["serial_log"])
    deadline = time.monotonic() + 180
    while b"KASOU READY" not in log.read_bytes():
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not boot")
        time.sleep(0.1)
    while f"inet {ip}/" not in guest(vm, "ip -4 addr show dev eth0"):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} got no DHCP lease")
        time.sleep(0.5)
    return vm


def throughput_mbit(a: dict[str, Any], b: dict[str, Any]) -> float:
    guest(b, "rm -f /tmp/got; (sleep 600 | nc -l -p 7000 | (dd bs=1 count=1 of=/dev/null "
             "2>/dev/null; s=$(cut -d' ' -f1 /proc/uptime); n=$(wc -c); "
             "e=$(cut -d' ' -f1 /proc/uptime); echo \"GOT $n $s $e\" > /tmp/got) &)")
    time.sleep(0.5)
    guest(a, f"dd if=/dev/zero bs=64k count={MIB * 16} 2>/dev/null | nc {B_IP} 7000")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        m = re.search(r"GOT (\d+) ([\d.]+) ([\d.]+)", guest(b, "cat /tmp/got 2>/dev/null"))
        if m:
            n, start, end = int(m.group(1)), float(m.group(2)), float(m.group(3))
            return n * 8 / max(end - start, 0.01) / 1e6
        time.sleep(0.5)
    raise SystemExit("the transfer did not finish")


def ping_rtts(a: dict[str, Any], one_flow: bool) -> list[float]:
    """Every echo's RTT (ms). One flow: one ping command (after its first echo, conntrack
    passes the rest as established). New flows: a ping command per echo, each a new ICMP
    id, so every echo walks B's whole rule chain."""
    if one_flow:
        out = guest(a, f"ping -c {PINGS} -i 0.2 {B_IP}")
    else:
        out = guest(a, f"for i in $(seq {PINGS}); do ping -c 1 {B_IP}; done")
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    if len(rtts) < PINGS // 2:
        raise SystemExit(f"pings failed: {out[-500:]}")
    return rtts


def set_rules(e: Env, count: int) -> None:
    """B's group `fw<count>`: count-1 deny rules that never match (other ports and
    addresses), then allow-all. Swapping groups is live, like any rule change."""
    c = Client(Layout(e.home))
    for other in c.get("/secgroups"):
        if "b" in other["vms"]:
            c.post(f"/secgroups/{other['name']}/detach", {"vm": "b"})
    name = f"fw{count}"
    if name not in {g["name"] for g in c.get("/secgroups")}:
        rules = [{"direction": "in", "protocol": "tcp", "ports": str(20000 + i),
                  "cidr": f"192.0.2.{i % 250 + 1}/32", "action": "deny", "priority": 10}
                 for i in range(count - 1)]
        rules.append({"direction": "in", "priority": 20})
        c.post("/secgroups", {"name": name, "rules": rules})
    c.post(f"/secgroups/{name}/attach", {"vm": "b"})


def measure() -> dict[str, Any]:
    e = Env()
    try:
        e.start()
        e.plain("network", "create", "bench", "--subnet", SUBNET)
        a, b = boot(e, "a", A_IP), boot(e, "b", B_IP)
        res: dict[str, list[float]] = {k: [] for k in (
            "tput", "ping1_1", "ping1_100", "pingn_1", "pingn_100")}
        set_rules(e, 1)
        for _ in range(ROUNDS):
            res["tput"].append(throughput_mbit(a, b))
        for _ in range(ROUNDS):     # A/B interleaved: drift hits both alike
            for count in (1, 100):
                set_rules(e, count)
                res[f"ping1_{count}"] += ping_rtts(a, True)
                res[f"pingn_{count}"] += ping_rtts(a, False)
        return {k: v for k, v in res.items()}
    finally:
        e.close()


def run() -> str:
    if os.geteuid() != 0:
        return "## Network\n\nNot measured: host networks need root.\n"
    r = measure()
    med = {k: statistics.median(v) for k, v in r.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] for k, v in r.items() if len(v) >= 2}
    tput = ", ".join(f"{x:.2f}" for x in r["tput"])
    rows = [("one flow", "ping1"), ("new flow per echo", "pingn")]
    lines = [
        "## Network (host network, two tiny guests, TCG)", "",
        f"Two guests on one kasou bridge network, in a network namespace of its own. "
        f"Throughput: {MIB} MiB through `dd | nc`, timed by the receiver from first to last "
        f"byte; {ROUNDS} runs, median. Latency: busybox `ping`, guest A to guest B, with B's "
        "security group holding 1 rule (allow all inbound) or 100 (99 non-matching deny "
        "rules checked first, then the allow); "
        f"{ROUNDS} interleaved rounds of {PINGS} echoes per case, rules swapped live; median "
        "and 90th percentile of all echoes.", "",
        f"VM-to-VM TCP throughput: **{med['tput']:.1f} Mbit/s** (runs: {tput}).", "",
        "| ping RTT | 1 rule: median / p90 | 100 rules: median / p90 | added (median) |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        one, hundred = f"{key}_1", f"{key}_100"
        lines.append(f"| {label} | {med[one]:.2f} / {p90[one]:.2f} ms | {med[hundred]:.2f} / "
                     f"{p90[hundred]:.2f} ms | {med[hundred] - med[one]:+.2f} ms |")
    lines += ["", "A new flow walks the whole chain; an established one skips it (conntrack). "
              "Under TCG the guests' own network stacks cost milliseconds per packet, so the "
              "host's rule evaluation disappears in their noise.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
