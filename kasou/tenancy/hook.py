"""VM quotas: what a project's VMs count against its quota, checked at create and start.

At create, the project's defined VMs (running or not) count, so a project cannot hold more
than its quota; at start, only live VMs count, so a lowered quota is honoured from the next
start. Both checks run under the VM service's locks, so racing requests cannot both pass.
"""

from __future__ import annotations

from kasou.service.hooks import VMHook
from kasou.state import LIVE
from kasou.store.base import VMRecord
from kasou.store.sqlite import SQLiteStore
from kasou.tenancy.service import TenancyService


def public_forwards(forwards: list[str]) -> int:
    """Forwards reachable from other hosts: bound to an address that is not loopback.
    ("[ADDR:]HOSTPORT:GUESTPORT[/proto]"; without ADDR kasou binds 127.0.0.1.)"""
    count = 0
    for fwd in forwards:
        parts = fwd.split("/")[0].rsplit(":", 2)
        addr = parts[0].strip("[]") if len(parts) == 3 else "127.0.0.1"
        if not (addr.startswith("127.") or addr in ("::1", "localhost")):
            count += 1
    return count


class TenancyHook(VMHook):
    name = "quota"

    def __init__(self, tenancy: TenancyService, store: SQLiteStore) -> None:
        self.tenancy = tenancy
        self.store = store
        tenancy.usage.register(self.usage)
        tenancy.holdings.append(lambda project: len(store.list_vms(project)))

    def usage(self, project: str) -> dict[str, int]:
        vms = self.store.list_vms(project)
        return {"vms": len(vms), "vcpus": sum(v.spec.vcpus for v in vms),
                "memory_mib": sum(v.spec.memory for v in vms),
                "forwards": sum(public_forwards(v.spec.forwards) for v in vms)}

    def validate(self, rec: VMRecord) -> None:
        self.tenancy.check_quota(rec.project, {
            "vms": 1, "vcpus": rec.spec.vcpus, "memory_mib": rec.spec.memory,
            "forwards": public_forwards(rec.spec.forwards)})

    def admit(self, rec: VMRecord) -> None:
        live = [v for v in self.store.list_vms(rec.project) if v.state in LIVE and v.id != rec.id]
        used = {"vcpus": sum(v.spec.vcpus for v in live),
                "memory_mib": sum(v.spec.memory for v in live)}
        self.tenancy.check_quota(rec.project, {"vcpus": rec.spec.vcpus,
                                               "memory_mib": rec.spec.memory}, used=used)
