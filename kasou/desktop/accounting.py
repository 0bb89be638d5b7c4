"""Pool arithmetic, pure: desktop names, who gets which desktop, what a resize adds or
removes, and whether a pool fits the host. The service does the acting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kasou.errors import CapacityError, Conflict
from kasou.host.capacity import HostCapacity, Usage, committed


@dataclass(frozen=True)
class Seat:
    """One desktop as the arithmetic sees it: its index in the pool and its user."""

    index: int
    user: str | None = None


def desktop_name(pool: str, index: int) -> str:
    return f"{pool}-{index}"


def pick_free(pool: str, seats: Sequence[Seat], user: str) -> Seat:
    """The desktop `user` gets: the free one with the lowest index. A user holds at most one
    desktop of a pool: assigning twice is refused, naming the desktop they have."""
    for s in seats:
        if s.user == user:
            raise Conflict(f"user {user!r} already has desktop {desktop_name(pool, s.index)} "
                           f"of pool {pool!r}", field="user")
    free = sorted(s.index for s in seats if s.user is None)
    if not free:
        raise Conflict(f"pool {pool!r} has no free desktop: all {len(seats)} are assigned; "
                       "resize it or have a user return one", field="user")
    return Seat(free[0])


def seat_of(pool: str, seats: Sequence[Seat], user: str) -> Seat:
    for s in seats:
        if s.user == user:
            return s
    raise Conflict(f"user {user!r} has no desktop in pool {pool!r}", field="user")


@dataclass(frozen=True)
class ResizePlan:
    add: list[int]          # indices of desktops to make
    remove: list[int]       # indices of free desktops to delete


def plan_resize(pool: str, seats: Sequence[Seat], size: int) -> ResizePlan:
    """Grow by filling the lowest missing indices (1..); shrink by removing free desktops,
    highest index first. Assigned desktops are never removed: a shrink that would need one
    is refused, naming the users who hold them."""
    have = {s.index for s in seats}
    if size >= len(seats):
        add: list[int] = []
        n = 1
        while len(have) + len(add) < size:
            if n not in have:
                add.append(n)
            n += 1
        return ResizePlan(add=add, remove=[])
    free = sorted((s.index for s in seats if s.user is None), reverse=True)
    drop = len(seats) - size
    if drop > len(free):
        users = sorted(s.user for s in seats if s.user is not None)
        raise Conflict(f"pool {pool!r} cannot shrink to {size}: {len(users)} of its "
                       f"{len(seats)} desktops are assigned ({', '.join(users)}); "
                       "have users return desktops first", field="size")
    return ResizePlan(add=[], remove=free[:drop])


def pool_demand(size: int, vcpus: int, memory_mib: int) -> list[Usage]:
    return [Usage(vcpus, memory_mib)] * size


def check_pool_fits(cap: HostCapacity, pool: str, others: Sequence[Usage],
                    mine: Sequence[Usage]) -> None:
    """A pool is refused when all desktops of all pools, running at once, would not fit the
    host (QEMU's overhead counted per desktop): any assigned desktop must be able to start.
    VMs outside pools come and go, so they are checked at each start instead."""
    need = committed(cap, mine)
    held = committed(cap, others)
    short = []
    if held.vcpus + need.vcpus > cap.vcpu_limit:
        short.append(f"{need.vcpus} vCPUs, {max(0, cap.vcpu_limit - held.vcpus)} of "
                     f"{cap.vcpu_limit} are left ({cap.cores} cores, overcommit "
                     f"{float(cap.cpu_overcommit)})")
    if held.memory_mib + need.memory_mib > cap.memory_limit_mib:
        short.append(f"{need.memory_mib} MiB with QEMU's overhead, "
                     f"{max(0, cap.memory_limit_mib - held.memory_mib)} of "
                     f"{cap.memory_limit_mib} MiB are left")
    if short:
        raise CapacityError(f"pool {pool!r} of {len(mine)} desktops does not fit this host "
                            f"(desktops of other pools counted): it needs " +
                            "; ".join(short))
