"""What a user may ask of a VM's share of the host, and the checks that go with it.

`Limits` validates what needs no context (a CPU list's syntax, a size); `check_limits`
checks against the VM (its vCPUs, its memory) and the host (its CPUs) before anything is
applied. Every refusal names the field.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kasou.errors import InvalidSpec
from kasou.host.capacity import vm_overhead_mib
from kasou.host.cgroups import format_cpu_list, parse_cpu_list
from kasou.units import parse_size

__all__ = [
    "MEMORY_TARGET_FLOOR_MIB",
    "MIN_CPU_LIMIT",
    "Limits",
    "check_limits",
    "memory_limit_bytes",
    "merge",
    "target_floor_mib",
]

MIN_CPU_LIMIT = 0.01               # 1% of a core: 1 ms per 100 ms period, the kernel's floor
MEMORY_TARGET_FLOOR_MIB = 64       # a Linux guest below this thrashes or OOM-kills at once
MEMORY_HEADROOM_MIB = 64           # on top of QEMU's counted overhead: see memory_limit_bytes


class Limits(BaseModel):
    """Per-VM controls. None means "not set": the host's default applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_limit: float | None = Field(
        default=None, description="At most this many host CPUs' worth of time, e.g. 0.25")
    cpu_weight: int | None = Field(
        default=None, ge=1, le=10000, description="Relative CPU share under contention "
        "(default 100)")
    pin: str | None = Field(default=None, description="Host CPUs to run on, e.g. '0' or '0-1,3'")
    memory_target: int | None = Field(
        default=None, description="Balloon target in MiB (or a size such as 128M)")
    io_weight: int | None = Field(
        default=None, ge=1, le=1000, description="Relative disk I/O share (default 100)")

    @field_validator("cpu_limit")
    @classmethod
    def _cpu_limit(cls, v: float | None) -> float | None:
        if v is None:
            return v
        if not math.isfinite(v) or v < MIN_CPU_LIMIT:
            raise ValueError(f"must be at least {MIN_CPU_LIMIT} (1% of one CPU)")
        return v

    @field_validator("pin", mode="before")
    @classmethod
    def _pin(cls, v: Any) -> str | None:
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        if not isinstance(v, str):
            raise ValueError("must be a CPU list such as '0' or '0-1,3'")
        cpus = parse_cpu_list(v)
        if not cpus:
            raise ValueError("names no CPU; use e.g. '0' or '0-1,3'")
        return format_cpu_list(cpus)

    @field_validator("memory_target", mode="before")
    @classmethod
    def _memory_target(cls, v: Any) -> int | None:
        if v is None:
            return None
        size = parse_size(v, default_unit="M")
        if size % (1 << 20):
            raise ValueError("must be a whole number of MiB")
        return size >> 20

    def cpus(self) -> frozenset[int] | None:
        return parse_cpu_list(self.pin) if self.pin else None


def merge(base: Limits, changes: dict[str, Any]) -> Limits:
    """`base` with the fields in `changes` replaced (None clears one), validated again."""
    data = base.model_dump()
    data.update(changes)
    return Limits.model_validate(data)


def target_floor_mib(image_min_mib: int | None) -> int:
    return max(MEMORY_TARGET_FLOOR_MIB, image_min_mib or 0)


def check_limits(limits: Limits, *, vcpus: int, memory_mib: int, host_cpus: frozenset[int],
                 floor_mib: int, prefix: str = "") -> None:
    """Refuse limits this VM or host cannot honour, naming the field."""
    def bad(field: str, reason: str) -> InvalidSpec:
        name = f"{prefix}{field}"
        return InvalidSpec(f"{name}: {reason}", field=name)

    if limits.cpu_limit is not None and limits.cpu_limit > vcpus:
        raise bad("cpu_limit", f"{limits.cpu_limit:g} CPUs is more than the VM's {vcpus} "
                               f"vCPU{'s' if vcpus > 1 else ''} can use")
    cpus = limits.cpus()
    if cpus is not None and not cpus <= host_cpus:
        missing = format_cpu_list(cpus - host_cpus)
        raise bad("pin", f"CPU {missing} is not one this host lets kasou use "
                         f"(it has {format_cpu_list(host_cpus)})")
    target = limits.memory_target
    if target is not None and target > memory_mib:
        raise bad("memory_target", f"{target} MiB is above the VM's memory ({memory_mib} MiB)")
    if target is not None and target < floor_mib:
        raise bad("memory_target", f"{target} MiB is below the safe floor of {floor_mib} MiB "
                                   "for this guest")


def memory_limit_bytes(memory_mib: int, accel: str) -> int:
    """The hard limit on a QEMU process: guest RAM plus QEMU's own overhead as capacity
    counts it (host/capacity.py), plus headroom. Measured here (tiny guest, 256 MiB, TCG):
    QEMU's anonymous memory beyond guest RAM is ≈ 41 MiB of device state and ROMs, ≈ 15 MiB
    holding the -kernel/-initrd images, and up to the 64 MiB translation buffer: ≈ 120 MiB,
    so the capacity figure alone (128) would leave a guest that touches all its RAM a few
    MiB from the OOM killer. The limit is a cap against a runaway QEMU, not a reservation."""
    return (memory_mib + vm_overhead_mib(accel) + MEMORY_HEADROOM_MIB) << 20
