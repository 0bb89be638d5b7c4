"""Desktop pool arithmetic: who gets which desktop, what a resize does, what fits."""

from __future__ import annotations

import pytest

from kasou.desktop.accounting import (
    Seat,
    check_pool_fits,
    desktop_name,
    pick_free,
    plan_resize,
    pool_demand,
    seat_of,
)
from kasou.desktop.models import PoolSpec
from kasou.errors import CapacityError, Conflict
from kasou.host.capacity import HostCapacity

CAP = HostCapacity(cores=2, memory_mib=4096, cpu_overcommit=4.0, reserved_memory_mib=512,
                   vm_overhead_mib=128)     # 8 vCPUs, 3584 MiB


def seats(*users: str | None) -> list[Seat]:
    return [Seat(i + 1, u) for i, u in enumerate(users)]


def test_a_user_gets_the_lowest_free_desktop() -> None:
    assert pick_free("p", seats("alice", None, None), "bob") == Seat(2)
    assert pick_free("p", [Seat(3), Seat(1, "alice"), Seat(2)], "bob") == Seat(2)


def test_assigning_a_user_twice_is_refused_naming_their_desktop() -> None:
    with pytest.raises(Conflict, match="'alice' already has desktop p-2"):
        pick_free("p", seats(None, "alice", None), "alice")


def test_a_full_pool_refuses_with_how_many() -> None:
    with pytest.raises(Conflict, match="no free desktop: all 2 are assigned"):
        pick_free("p", seats("alice", "bob"), "carol")
    with pytest.raises(Conflict, match="all 0 are assigned"):
        pick_free("p", [], "carol")


def test_seat_of_finds_a_users_desktop_or_says_none() -> None:
    assert seat_of("p", seats(None, "bob"), "bob") == Seat(2, "bob")
    with pytest.raises(Conflict, match="'carol' has no desktop in pool 'p'"):
        seat_of("p", seats(None, "bob"), "carol")


def test_growing_fills_missing_indices_first() -> None:
    assert plan_resize("p", [], 3).add == [1, 2, 3]
    plan = plan_resize("p", [Seat(1), Seat(3, "bob")], 4)
    assert plan.add == [2, 4] and plan.remove == []
    assert plan_resize("p", seats(None, None), 2).add == []


def test_shrinking_removes_free_desktops_highest_first() -> None:
    plan = plan_resize("p", seats(None, "alice", None, None), 2)
    assert plan.remove == [4, 3] and plan.add == []
    assert plan_resize("p", seats("alice", None, "bob"), 2).remove == [2]
    assert plan_resize("p", seats(None, None), 0).remove == [2, 1]


def test_shrinking_below_the_assigned_desktops_is_refused_naming_users() -> None:
    with pytest.raises(Conflict, match=r"2 of its 3 desktops are assigned \(alice, bob\)"):
        plan_resize("p", seats("bob", None, "alice"), 1)


def test_a_pool_that_fits_passes() -> None:
    # 8 desktops × (1 vCPU, 256 MiB + 128 MiB) = 8 vCPUs, 3072 MiB: inside 8 / 3584.
    check_pool_fits(CAP, "p", [], pool_demand(8, 1, 256))


def test_a_pool_larger_than_the_host_is_refused_with_numbers() -> None:
    with pytest.raises(CapacityError, match=r"of 9 desktops .* 9 vCPUs, 8 of 8 are left"):
        check_pool_fits(CAP, "p", [], pool_demand(9, 1, 256))
    with pytest.raises(CapacityError, match=r"4224 MiB with QEMU's overhead, 3584 of 3584"):
        check_pool_fits(CAP, "p", [], pool_demand(4, 1, 928))


def test_other_pools_count_against_the_host() -> None:
    others = pool_demand(6, 1, 256)
    check_pool_fits(CAP, "p", others, pool_demand(2, 1, 256))
    with pytest.raises(CapacityError, match="3 vCPUs, 2 of 8 are left"):
        check_pool_fits(CAP, "p", others, pool_demand(3, 1, 256))


def test_desktop_names_stay_valid_vm_names() -> None:
    assert desktop_name("lab", 12) == "lab-12"
    PoolSpec(name="x" * 56, template="t", size=1)
    with pytest.raises(ValueError, match="at most 56 characters"):
        PoolSpec(name="x" * 57, template="t", size=1)
    with pytest.raises(ValueError, match="less than or equal to 1000"):
        PoolSpec(name="p", template="t", size=1001)
    with pytest.raises(ValueError, match="policy"):
        PoolSpec(name="p", template="t", size=1, policy="wipe")  # type: ignore[arg-type]
