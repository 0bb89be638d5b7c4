"""Typed QMP wrappers for the virtio-balloon and the block statistics, over engine.qmp.

The balloon device is the one argv.balloon_args adds (id balloon0). Guest memory figures
come from the balloon's guest-stats, which QEMU refreshes only once a polling interval is
set on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qemu.qmp import QMPClient

from kasou.engine.qmp import _execute

BALLOON_PATH = "/machine/peripheral/balloon0"
BALLOON_CHANGE = "BALLOON_CHANGE"


@dataclass(frozen=True)
class GuestMemory:
    """What the guest's balloon driver reports, in bytes (None: not reported yet)."""

    total: int | None
    free: int | None
    available: int | None
    last_update: int          # guest-stats timestamp (s); 0 when the guest never reported


@dataclass(frozen=True)
class BlockTotals:
    rd_bytes: int = 0
    wr_bytes: int = 0
    rd_ops: int = 0
    wr_ops: int = 0


async def set_target(qmp: QMPClient, target_bytes: int) -> None:
    """Ask the guest to give memory back until it has `target_bytes` (it may take time)."""
    await _execute(qmp, "balloon", {"value": target_bytes})


async def actual(qmp: QMPClient) -> int:
    """The guest's memory now, balloon pages subtracted, in bytes."""
    reply = await _execute(qmp, "query-balloon")
    return int(reply["actual"])


async def set_stats_interval(qmp: QMPClient, seconds: int) -> None:
    await _execute(qmp, "qom-set", {"path": BALLOON_PATH,
                                    "property": "guest-stats-polling-interval",
                                    "value": seconds})


def parse_guest_stats(reply: dict[str, Any]) -> GuestMemory:
    stats = reply.get("stats", {})

    def value(key: str) -> int | None:
        v = stats.get(key)
        # QEMU reports -1 for a figure the guest has not sent.
        return int(v) if isinstance(v, int) and v >= 0 else None

    return GuestMemory(total=value("stat-total-memory"), free=value("stat-free-memory"),
                       available=value("stat-available-memory"),
                       last_update=int(reply.get("last-update", 0)))


async def guest_stats(qmp: QMPClient) -> GuestMemory:
    reply = await _execute(qmp, "qom-get", {"path": BALLOON_PATH, "property": "guest-stats"})
    return parse_guest_stats(reply)


def parse_blockstats(reply: list[dict[str, Any]]) -> BlockTotals:
    """Sum over the guest's drives (entries attached to a device); nodes without a
    device (backing files, the -kernel loader) are not guest I/O."""
    rd = wr = rops = wops = 0
    for entry in reply:
        if not entry.get("qdev") and not entry.get("device"):
            continue
        s = entry.get("stats", {})
        rd += int(s.get("rd_bytes", 0))
        wr += int(s.get("wr_bytes", 0))
        rops += int(s.get("rd_operations", 0))
        wops += int(s.get("wr_operations", 0))
    return BlockTotals(rd_bytes=rd, wr_bytes=wr, rd_ops=rops, wr_ops=wops)


async def blockstats(qmp: QMPClient) -> BlockTotals:
    return parse_blockstats(await _execute(qmp, "query-blockstats"))
