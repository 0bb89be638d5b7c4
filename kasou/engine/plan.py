"""LaunchPlan: everything needed to build one QEMU command line, as plain data.

The plan is resolved by the service from the VM spec, the image and the host probe; the
argv builders in `argv.py` turn it into a command line without reading anything from the
system (so they can be tested against golden files).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Machine = Literal["microvm", "pc", "q35"]
Accel = Literal["kvm", "tcg"]
Firmware = Literal["bios", "uefi", "none"]


@dataclass(frozen=True)
class DiskPlan:
    path: str
    format: Literal["qcow2", "raw"] = "qcow2"
    readonly: bool = False
    media: Literal["disk", "cdrom"] = "disk"


@dataclass(frozen=True)
class NicPlan:
    """A NIC: user-mode NAT (with forwards), or a TAP device on a host bridge."""

    mac: str
    kind: Literal["user", "tap"] = "user"
    forwards: tuple[str, ...] = ()     # e.g. "tcp:127.0.0.1:2222-:22"
    ifname: str | None = None          # kind "tap": the TAP kasou made before the launch
    vhost: bool = False                # kind "tap": vhost-net (KVM only; decided by the hook)


@dataclass(frozen=True)
class RunPaths:
    """Files in the VM's run dir."""

    qmp: str
    console: str
    serial_log: str
    pidfile: str
    agent: str | None = None           # guest agent socket; None: no agent channel


@dataclass(frozen=True)
class LaunchPlan:
    vm_id: str
    name: str
    machine: Machine
    accel: Accel
    vcpus: int
    memory_mib: int
    paths: RunPaths
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: tuple[DiskPlan, ...] = ()
    nics: tuple[NicPlan, ...] = ()
    firmware: Firmware = "bios"
    ovmf_code: str | None = None      # when firmware == "uefi"
    ovmf_vars: str | None = None      # per-VM writable copy
    display: bool = False             # VGA + a VNC server with no listener (kasou/console)
    tsc_khz: int | None = None        # host TSC frequency; microvm under TCG needs it
    qemu_binary: str = "qemu-system-x86_64"
    extra_cmdline: tuple[str, ...] = field(default=())
    # QEMU arguments an area built itself (storage: volume disks, -incoming), appended
    # after everything else; each area golden-tests its own builder.
    extra_args: tuple[str, ...] = field(default=())
