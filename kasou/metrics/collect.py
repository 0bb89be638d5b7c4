"""Reading one sample: a VM's figures from /proc, QMP and its TAP devices; the host's from
/proc and KSM. Figures a source cannot give come back as UNKNOWN, never as zero.

CPU is the QEMU process's own time (every thread: vCPUs, I/O, TCG), read from
/proc/<pid>/stat, so it is the host-side cost of the VM whatever cgroup version is in use.
Network counters exist only for TAP NICs (QEMU 7.2 keeps none for user-mode networking)
and are given from the guest's side: what the TAP sends, the guest receives.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kasou.engine import balloon
from kasou.host.ksm import ksm_info
from kasou.isolation.sandbox import split_opts
from kasou.metrics.series import UNKNOWN, Sample

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
QMP_TIMEOUT = 2.0


@dataclass
class LiveVM:
    id: str
    name: str
    project: str
    pid: int
    qmp: Any                   # qemu.qmp QMPClient
    taps: tuple[str, ...] = ()


def tap_names(argv: list[str]) -> tuple[str, ...]:
    names = []
    for opt, value in itertools.pairwise(argv):
        if opt != "-netdev":
            continue
        items = split_opts(value)
        if items and items[0] == (None, "tap"):
            names += [v for k, v in items if k == "ifname"]
    return tuple(names)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def proc_cpu_ns(pid: int) -> int:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return UNKNOWN
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    statm = _read(f"/proc/{pid}/statm").split()
    return int(statm[1]) * PAGE if len(statm) > 1 else UNKNOWN


def tap_counters(taps: tuple[str, ...]) -> tuple[int, int, int, int]:
    """(rx bytes, tx bytes, rx packets, tx packets) as the guest sees them."""
    if not taps:
        return UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
    totals = [0, 0, 0, 0]
    for tap in taps:
        base = f"/sys/class/net/{tap}/statistics/"
        for i, name in enumerate(("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")):
            text = _read(base + name).strip()
            if not text.isdigit():
                return UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
            totals[i] += int(text)
    return totals[0], totals[1], totals[2], totals[3]


async def _qmp(coro: Any) -> Any:
    try:
        return await asyncio.wait_for(coro, QMP_TIMEOUT)
    except Exception:   # a busy, paused or dying QEMU: that figure is unknown this time
        return None


async def sample_vm(vm: LiveVM, now_ms: int) -> Sample:
    actual, guest, blocks = await asyncio.gather(
        _qmp(balloon.actual(vm.qmp)), _qmp(balloon.guest_stats(vm.qmp)),
        _qmp(balloon.blockstats(vm.qmp)))
    g = guest if isinstance(guest, balloon.GuestMemory) and guest.last_update else None
    b = blocks if isinstance(blocks, balloon.BlockTotals) else None

    def known(v: int | None) -> int:
        return UNKNOWN if v is None else v

    return (now_ms, proc_cpu_ns(vm.pid), proc_rss_bytes(vm.pid), known(actual),
            known(g.total if g else None), known(g.free if g else None),
            known(g.available if g else None),
            b.rd_bytes if b else UNKNOWN, b.wr_bytes if b else UNKNOWN,
            b.rd_ops if b else UNKNOWN, b.wr_ops if b else UNKNOWN,
            *tap_counters(vm.taps))


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy ns, total ns) over all CPUs from /proc/stat's first line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            ticks = [int(x) for x in line.split()[1:]]
            idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
            total = sum(ticks[:8])          # guest time is already inside user time
            scale = 1_000_000_000 // CLK_TCK
            return (total - idle) * scale, total * scale
    return UNKNOWN, UNKNOWN


def parse_meminfo(text: str) -> tuple[int, int]:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("MemTotal", UNKNOWN), values.get("MemAvailable", UNKNOWN)


def host_sample(now_ms: int, vms_running: int) -> Sample:
    busy, total = parse_proc_stat(_read("/proc/stat"))
    mem_total, mem_avail = parse_meminfo(_read("/proc/meminfo"))
    ksm = ksm_info()
    return (now_ms, busy, total, mem_total, mem_avail,
            ksm.saved_bytes if ksm.available else UNKNOWN, vms_running)
