"""Host capacity math: does one more VM fit? Pure functions over numbers.

A VM that does not fit is refused before anything is touched (DESIGN.md: never
half-started), with a message naming what is short, by how much, and the policy.

vCPUs are overcommitted (idle guests under TCG cost ≈ 0.7% of a core each); memory is not
by default, because guest RAM that QEMU has touched stays resident and the host OOM killer
would pick a QEMU process, i.e. a whole tenant VM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from kasou.errors import CapacityError, InvalidSpec

__all__ = [
    "KVM_VM_OVERHEAD_MIB",
    "TCG_VM_OVERHEAD_MIB",
    "HostCapacity",
    "Usage",
    "available",
    "check_fits",
    "committed",
    "vm_overhead_mib",
]

# What one QEMU process costs beyond its guest's RAM. Measured here (QEMU 7.2, pc, 256 MiB
# guest): ≈ 41 MiB RSS before the guest runs (QEMU, firmware ROMs, device state), plus under
# TCG the translated-code buffer, capped by argv.TCG_TB_SIZE_MIB = 64 MiB (≈ 42 MiB used by
# an idle guest), plus slirp/virtio buffers. KVM has no code buffer.
TCG_VM_OVERHEAD_MIB = 128
KVM_VM_OVERHEAD_MIB = 64


def vm_overhead_mib(accel: str) -> int:
    return KVM_VM_OVERHEAD_MIB if accel == "kvm" else TCG_VM_OVERHEAD_MIB


@dataclass(frozen=True)
class Usage:
    """What a VM asks for (or what is left): vCPUs and guest memory in MiB."""

    vcpus: int
    memory_mib: int


@dataclass(frozen=True)
class HostCapacity:
    cores: int
    memory_mib: int
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    reserved_memory_mib: int = 512        # the host's own kernel, kasou, sshd, page cache
    vm_overhead_mib: int = TCG_VM_OVERHEAD_MIB

    def __post_init__(self) -> None:
        _at_least(self.cores, 1, "cores")
        _at_least(self.memory_mib, 1, "memory_mib")
        _at_least(self.reserved_memory_mib, 0, "reserved_memory_mib")
        _at_least(self.vm_overhead_mib, 0, "vm_overhead_mib")
        for name in ("cpu_overcommit", "memory_overcommit"):
            if not getattr(self, name) > 0:
                raise InvalidSpec(f"{name} must be above 0, got {getattr(self, name)}",
                                  field=name)

    @property
    def vcpu_limit(self) -> int:
        return math.floor(self.cores * self.cpu_overcommit)

    @property
    def memory_limit_mib(self) -> int:
        return max(0, math.floor((self.memory_mib - self.reserved_memory_mib)
                                 * self.memory_overcommit))


def _at_least(value: int, low: int, field: str) -> None:
    if value < low:
        raise InvalidSpec(f"{field} must be at least {low}, got {value}", field=field)


def committed(cap: HostCapacity, used: Sequence[Usage]) -> Usage:
    """What the running VMs hold, QEMU's own overhead included."""
    return Usage(vcpus=sum(u.vcpus for u in used),
                 memory_mib=sum(u.memory_mib + cap.vm_overhead_mib for u in used))


def available(cap: HostCapacity, used: Sequence[Usage]) -> Usage:
    """What is left for new VMs (never negative, even after the policy was tightened)."""
    held = committed(cap, used)
    return Usage(vcpus=max(0, cap.vcpu_limit - held.vcpus),
                 memory_mib=max(0, cap.memory_limit_mib - held.memory_mib))


def check_fits(cap: HostCapacity, used: Sequence[Usage], new: Usage) -> None:
    """Raise CapacityError naming every resource that is short, with numbers."""
    _at_least(new.vcpus, 1, "vcpus")
    _at_least(new.memory_mib, 1, "memory_mib")
    free = available(cap, used)
    short = [msg for msg in (_cpu_shortage(cap, free, new), _memory_shortage(cap, free, new))
             if msg]
    if short:
        raise CapacityError("; ".join(short))


def _cpu_shortage(cap: HostCapacity, free: Usage, new: Usage) -> str | None:
    if new.vcpus <= free.vcpus:
        return None
    return (f"not enough CPU: the VM needs {new.vcpus} vCPUs, {free.vcpus} of "
            f"{cap.vcpu_limit} vCPUs are free ({cap.cores} cores, "
            f"overcommit {float(cap.cpu_overcommit)})")


def _memory_shortage(cap: HostCapacity, free: Usage, new: Usage) -> str | None:
    need = new.memory_mib + cap.vm_overhead_mib
    if need <= free.memory_mib:
        return None
    return (f"not enough memory: the VM needs {need} MiB ({new.memory_mib} MiB guest + "
            f"{cap.vm_overhead_mib} MiB QEMU), {free.memory_mib} MiB of "
            f"{cap.memory_limit_mib} MiB is free (overcommit {float(cap.memory_overcommit)})")
