"""Capacity math: limits, overhead, and messages that name what is short."""

from __future__ import annotations

import pytest

from kasou.errors import CapacityError, InvalidSpec
from kasou.host.capacity import (
    KVM_VM_OVERHEAD_MIB,
    TCG_VM_OVERHEAD_MIB,
    HostCapacity,
    Usage,
    available,
    check_fits,
    committed,
    vm_overhead_mib,
)

HOST = HostCapacity(cores=2, memory_mib=24105)      # this project's machines


def test_limits_apply_overcommit_and_reserve() -> None:
    assert HOST.vcpu_limit == 8
    assert HOST.memory_limit_mib == 24105 - 512
    doubled = HostCapacity(cores=3, memory_mib=1512, cpu_overcommit=1.5, memory_overcommit=2)
    assert doubled.vcpu_limit == 4                 # floor(4.5)
    assert doubled.memory_limit_mib == 2000


def test_overhead_counted_per_vm() -> None:
    used = [Usage(1, 256), Usage(2, 512)]
    assert committed(HOST, used) == Usage(3, 768 + 2 * TCG_VM_OVERHEAD_MIB)
    assert available(HOST, used) == Usage(5, 23593 - 768 - 2 * TCG_VM_OVERHEAD_MIB)


def test_overhead_by_accelerator() -> None:
    assert vm_overhead_mib("tcg") == TCG_VM_OVERHEAD_MIB
    assert vm_overhead_mib("kvm") == KVM_VM_OVERHEAD_MIB < TCG_VM_OVERHEAD_MIB


def test_fits_exactly_at_the_limit() -> None:
    cap = HostCapacity(cores=1, memory_mib=1024 + 512 + 128, cpu_overcommit=1.0)
    check_fits(cap, [], Usage(1, 1024))
    with pytest.raises(CapacityError):
        check_fits(cap, [], Usage(1, 1025))


def test_memory_message_names_numbers() -> None:
    cap = HostCapacity(cores=8, memory_mib=23512)          # 23000 MiB usable
    used = [Usage(1, 21672)]                                # + 128 overhead -> 1200 free
    with pytest.raises(CapacityError) as err:
        check_fits(cap, used, Usage(1, 4096))
    assert str(err.value) == ("not enough memory: the VM needs 4224 MiB (4096 MiB guest + "
                              "128 MiB QEMU), 1200 MiB of 23000 MiB is free (overcommit 1.0)")
    assert err.value.status == 409 and err.value.code == "capacity"


def test_cpu_message_names_numbers() -> None:
    with pytest.raises(CapacityError) as err:
        check_fits(HOST, [Usage(6, 256)], Usage(4, 256))
    assert str(err.value) == ("not enough CPU: the VM needs 4 vCPUs, 2 of 8 vCPUs are free "
                              "(2 cores, overcommit 4.0)")


def test_both_shortages_in_one_message() -> None:
    cap = HostCapacity(cores=1, memory_mib=1024, cpu_overcommit=1.0)
    with pytest.raises(CapacityError) as err:
        check_fits(cap, [], Usage(2, 4096))
    assert "not enough CPU" in str(err.value) and "not enough memory" in str(err.value)


def test_available_never_negative() -> None:
    tight = HostCapacity(cores=1, memory_mib=1024, cpu_overcommit=1.0)
    assert available(tight, [Usage(4, 4096)]) == Usage(0, 0)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"cores": 0}, "cores"),
    ({"cpu_overcommit": 0.0}, "cpu_overcommit"),
    ({"memory_overcommit": -1.0}, "memory_overcommit"),
    ({"reserved_memory_mib": -1}, "reserved_memory_mib"),
])
def test_bad_policy_names_the_field(kwargs: dict[str, float], field: str) -> None:
    args: dict[str, float] = {"cores": 2, "memory_mib": 1024, **kwargs}
    with pytest.raises(InvalidSpec) as err:
        HostCapacity(**args)  # type: ignore[arg-type]
    assert err.value.field == field


def test_bad_request_names_the_field() -> None:
    with pytest.raises(InvalidSpec) as err:
        check_fits(HOST, [], Usage(0, 256))
    assert err.value.field == "vcpus"
