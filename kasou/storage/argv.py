"""Pure builders for volume disks: the same dicts become `-blockdev/-object/-device` JSON
arguments at launch and `blockdev-add/object-add/device_add` commands on hotplug, so a
disk plugged live and the same disk at the next start (or a restore) are identical.

Each disk is a chain of nodes named after its attachment slot:

    vol<N>-file (file) -> vol<N>-fmt (qcow2|raw) -> vol<N> (throttle, group vol<N>-tg)
                               ^ backing: vol<N>-b1-fmt -> ...      ^ device vol<N>-dev

A linked clone's backing chain (its template, the template's template...) is opened as
explicit read-only nodes rather than by the path in the qcow2 header: a sandboxed QEMU
cannot open host paths itself, so every file it uses must appear here (kasou hands it
descriptors for them).

The throttle node is always there (with no limits it costs nothing), so limits can be set
and changed while the VM runs with one `qom-set` on the group.

Addresses are fixed by the slot, never left to QEMU: on pc the disk sits in PCI slot
0x10+N; on q35 on root port kasou-rp<N> (pcie.0 itself cannot hot-plug); microvm has
no hotplug and its virtio-mmio transports follow argv order, which is the slot order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kasou.errors import InvalidSpec

# microvm has 8 virtio-mmio transports; balloon, rng, the agent channel and a NIC take 4.
MAX_SLOTS = {"pc": 16, "q35": 8, "microvm": 4}
PC_FIRST_SLOT = 0x10
Q35_FIRST_PORT_ADDR = 0x10
Q35_CHASSIS = 0x40
RESTORE_FD = "kasou-restore"


@dataclass(frozen=True)
class VolumeDisk:
    slot: int
    path: str
    format: str
    readonly: bool
    serial: str                     # shows in the guest as /sys/block/vdX/serial
    bootindex: int | None
    limits: dict[str, int]          # QEMU ThrottleLimits keys; {} for none
    backing: tuple[tuple[str, str], ...] = ()   # (path, format), nearest template first


def node(slot: int) -> str:
    return f"vol{slot}"


def device_id(slot: int) -> str:
    return f"vol{slot}-dev"


def group_id(slot: int) -> str:
    return f"vol{slot}-tg"


def format_node(slot: int) -> str:
    return f"vol{slot}-fmt"


def root_port(slot: int) -> str:
    return f"kasou-rp{slot}"


def check_slot(machine: str, slot: int) -> None:
    limit = MAX_SLOTS[machine]
    if not 0 <= slot < limit:
        raise InvalidSpec(f"machine {machine} takes at most {limit} volumes", field="volumes")


def throttle_group(disk: VolumeDisk) -> dict[str, Any]:
    obj: dict[str, Any] = {"qom-type": "throttle-group", "id": group_id(disk.slot)}
    if disk.limits:
        obj["limits"] = dict(disk.limits)
    return obj


def blockdevs(disk: VolumeDisk) -> list[dict[str, Any]]:
    """The node chain, bottom first (blockdev-add order; delete in reverse)."""
    ro = disk.readonly
    # Writable disks pass guest discards down so thin files shrink again.
    discard = {} if ro else {"discard": "unmap"}
    n = node(disk.slot)
    nodes = _backing_nodes(disk)
    top_format: dict[str, Any] = {"driver": disk.format, "node-name": format_node(disk.slot),
                                  "file": f"{n}-file", "read-only": ro, **discard}
    if disk.format == "qcow2":
        # null: no backing at all (a standalone image); else the explicit chain.
        top_format["backing"] = f"{n}-b1-fmt" if disk.backing else None
    return [
        *nodes,
        {"driver": "file", "node-name": f"{n}-file", "filename": disk.path,
         "read-only": ro, **discard},
        top_format,
        {"driver": "throttle", "node-name": n, "throttle-group": group_id(disk.slot),
         "file": format_node(disk.slot), "read-only": ro},
    ]


def _backing_nodes(disk: VolumeDisk) -> list[dict[str, Any]]:
    """Read-only nodes for the backing chain, deepest first."""
    n = node(disk.slot)
    out: list[dict[str, Any]] = []
    depth = len(disk.backing)
    for level in range(depth, 0, -1):
        path, fmt = disk.backing[level - 1]
        fmt_node: dict[str, Any] = {"driver": fmt, "node-name": f"{n}-b{level}-fmt",
                                    "file": f"{n}-b{level}-file", "read-only": True}
        if fmt == "qcow2":
            fmt_node["backing"] = f"{n}-b{level + 1}-fmt" if level < depth else None
        out += [{"driver": "file", "node-name": f"{n}-b{level}-file", "filename": path,
                 "read-only": True}, fmt_node]
    return out


def device(machine: str, disk: VolumeDisk) -> dict[str, Any]:
    check_slot(machine, disk.slot)
    dev: dict[str, Any] = {"driver": "virtio-blk-pci", "id": device_id(disk.slot),
                           "drive": node(disk.slot), "serial": disk.serial}
    if machine == "microvm":
        dev["driver"] = "virtio-blk-device"
    elif machine == "pc":
        dev.update({"bus": "pci.0", "addr": hex(PC_FIRST_SLOT + disk.slot)})
    else:
        dev.update({"bus": root_port(disk.slot), "addr": "0x0"})
    if disk.bootindex is not None:
        dev["bootindex"] = disk.bootindex
    return dev


def root_ports(machine: str) -> list[dict[str, Any]]:
    """q35 only: one hot-pluggable PCIe root port per slot, always all of them, so the
    device set is the same however many disks are plugged (a restore depends on it)."""
    if machine != "q35":
        return []
    return [{"driver": "pcie-root-port", "id": root_port(i), "bus": "pcie.0",
             "chassis": Q35_CHASSIS + i, "addr": hex(Q35_FIRST_PORT_ADDR + i)}
            for i in range(MAX_SLOTS["q35"])]


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def volume_args(machine: str, disks: Sequence[VolumeDisk]) -> list[str]:
    args: list[str] = []
    for port in root_ports(machine):
        args += ["-device", _json(port)]
    for disk in sorted(disks, key=lambda d: d.slot):
        args += ["-object", _json(throttle_group(disk))]
        for bd in blockdevs(disk):
            args += ["-blockdev", _json(bd)]
        args += ["-device", _json(device(machine, disk))]
    return args


def restore_args(kind: str | None) -> list[str]:
    """Start QEMU ready for a restore: `incoming` waits for the saved state (sent over QMP
    as a file descriptor); `snapshot` starts paused so a snapshot can be loaded first."""
    if kind == "incoming":
        return ["-incoming", "defer"]
    if kind == "snapshot":
        return ["-S"]
    return []
