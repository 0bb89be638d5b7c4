"""The whole of kasou on one host, wired together: store, VM service, each area's service,
the hooks they add to a VM's life and the API routes they serve.

Each area (storage, network, host limits, metrics, ...) adds itself in `build_platform`:
its service, its VMHook, its router. Nothing else needs to know it exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import APIRouter

from kasou.host.capacity import HostCapacity
from kasou.host.probe import host_info
from kasou.paths import Layout, cache_dir
from kasou.service.hooks import VMHook
from kasou.service.vms import VMService
from kasou.store.sqlite import SQLiteStore
from kasou.store.tenancy import TenancyStore
from kasou.tenancy.hook import TenancyHook
from kasou.tenancy.service import TenancyService


@dataclass(frozen=True)
class Settings:
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    reserved_memory_mib: int = 512


@dataclass
class Platform:
    layout: Layout
    store: SQLiteStore
    vms: VMService
    tenancy: TenancyService
    routers: list[APIRouter] = field(default_factory=list)
    # Started after the VMs are re-attached, stopped before they are let go of.
    background: list[tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = \
        field(default_factory=list)

    async def startup(self) -> None:
        await self.vms.startup()
        for start, _ in self.background:
            await start()

    async def shutdown(self) -> None:
        for _, stop in reversed(self.background):
            await stop()
        await self.vms.shutdown()


def build_platform(layout: Layout, settings: Settings) -> Platform:
    layout.ensure()
    host = host_info(cache_dir())
    capacity = HostCapacity(cores=host.cores, memory_mib=host.memory_mib,
                            cpu_overcommit=settings.cpu_overcommit,
                            memory_overcommit=settings.memory_overcommit,
                            reserved_memory_mib=settings.reserved_memory_mib)
    store = SQLiteStore(layout.db)
    tenancy = TenancyService(TenancyStore(store))
    hooks: list[VMHook] = [TenancyHook(tenancy, store)]
    # Each area appends its hook to `hooks` here, before the VM service is made.
    vms = VMService(layout, store, host, capacity, hooks=hooks)
    platform = Platform(layout=layout, store=store, vms=vms, tenancy=tenancy)
    # Each area appends its router (and background tasks) to the platform here.
    return platform
