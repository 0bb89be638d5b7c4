"""One dnsmasq per network: DHCP (static reservations only) and DNS on the bridge.

Files live in the network's dir under the data dir: dnsmasq.conf, leases, dnsmasq.pid,
dnsmasq.log. dnsmasq daemonizes and outlives kasou like the VMs do.

The reservations are written into the config itself and dnsmasq is restarted when they
change: dnsmasq drops to `nobody` before it re-reads a hosts file on SIGHUP, and the data
dir is not readable by `nobody`. A restart takes milliseconds, and leases are kept in the
lease file across it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kasou.errors import EngineError
from kasou.store.network import NetworkRow

LEASE_TIME = "1h"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Host:
    mac: str
    ip: str
    hostname: str


@dataclass(frozen=True)
class Files:
    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "dnsmasq.conf"

    @property
    def leases(self) -> Path:
        return self.dir / "leases"

    @property
    def pid(self) -> Path:
        return self.dir / "dnsmasq.pid"

    @property
    def log(self) -> Path:
        return self.dir / "dnsmasq.log"


def config(net: NetworkRow, hosts: list[Host], files: Files) -> str:
    """The whole config (pure). Only reserved MACs get an address: the anti-spoofing rules
    allow each NIC only its reserved address anyway."""
    subnet = ipaddress.IPv4Network(net.subnet)
    lines = [
        "# written by kasou: changes are overwritten",
        f"interface={net.bridge}",
        "bind-interfaces",
        "except-interface=lo",
        f"listen-address={net.gateway}",
        f"dhcp-range={subnet.network_address},static,{subnet.netmask},{LEASE_TIME}",
        f"dhcp-leasefile={files.leases}",
        f"pid-file={files.pid}",
        f"log-facility={files.log}",
        "dhcp-authoritative",
        "domain-needed",
        "bogus-priv",
        "no-hosts",
    ]
    if net.mode == "isolated":
        # No way out: no default route for the guests, no upstream DNS.
        lines += ["no-resolv", "dhcp-option=option:router"]
    for h in hosts:
        name = f",{h.hostname}" if _HOSTNAME.match(h.hostname) else ""
        lines.append(f"dhcp-host={h.mac},{h.ip}{name}")
    return "\n".join(lines) + "\n"


def binary() -> str:
    path = shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.path.exists(p)), None)
    if path is None:
        raise EngineError("host networks need dnsmasq (apt-get install dnsmasq-base)")
    return path


def running_pid(files: Files) -> int | None:
    """The pid of this network's dnsmasq, checked against its command line (no pid reuse)."""
    try:
        pid = int(files.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if f"--conf-file={files.conf}".encode() in cmdline else None


def start(files: Files) -> int:
    proc = subprocess.run([binary(), f"--conf-file={files.conf}"], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        raise EngineError(f"dnsmasq did not start: {proc.stderr.strip() or proc.returncode}")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pid = running_pid(files)
        if pid:
            return pid
        time.sleep(0.02)
    raise EngineError(f"dnsmasq started but wrote no pid file {files.pid}")


def stop(files: Files) -> None:
    pid = running_pid(files)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)
    if Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ensure(net: NetworkRow, hosts: list[Host], files: Files) -> None:
    """Config current and dnsmasq running it; restarted only when the config changed."""
    files.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = config(net, hosts, files)
    old = files.conf.read_text() if files.conf.exists() else None
    if old == text and running_pid(files):
        return
    stop(files)
    _drop_stale_leases(files, {h.mac for h in hosts})
    files.conf.write_text(text)
    start(files)


def _drop_stale_leases(files: Files, macs: set[str]) -> None:
    """Forget the leases of NICs that are gone (dnsmasq is stopped while this runs)."""
    if not files.leases.exists():
        return
    keep = [line for line in files.leases.read_text().splitlines()
            if len(line.split()) > 1 and line.split()[1].lower() in macs]
    files.leases.write_text("".join(f"{line}\n" for line in keep))


def leases(files: Files) -> dict[str, str]:
    """MAC -> leased address, from dnsmasq's lease file."""
    out: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in files.leases.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                out[parts[1].lower()] = parts[2]
    return out
