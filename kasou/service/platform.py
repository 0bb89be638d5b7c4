"""The whole of kasou on one host, wired together: store, VM service, each area's service,
the hooks they add to a VM's life and the API routes they serve.

Each area (storage, network, host limits, metrics, ...) adds itself in `build_platform`:
its service, its VMHook, its router. Nothing else needs to know it exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import APIRouter

from kasou.api.routes import console as console_routes
from kasou.api.routes import desktops as desktop_routes
from kasou.api.routes import guest as guest_routes
from kasou.api.routes import networks as network_routes
from kasou.api.routes import storage as storage_routes
from kasou.cloudinit.hook import CloudInitHook
from kasou.console import ConsoleService, ConsoleTokens
from kasou.console.tokens import load_key
from kasou.desktop.hook import DesktopHook
from kasou.desktop.service import DesktopService
from kasou.guest.hook import GuestAgentHook
from kasou.guest.service import GuestService
from kasou.host.capacity import HostCapacity
from kasou.host.probe import host_info
from kasou.images.hook import ImageDiskHook
from kasou.isolation.setup import prepare as prepare_isolation
from kasou.metrics import setup as metrics_setup
from kasou.metrics.setup import prepare as prepare_metrics
from kasou.network.hook import NetworkHook
from kasou.network.service import NetworkService
from kasou.paths import Layout, cache_dir
from kasou.service.hooks import VMHook
from kasou.service.vms import VMService
from kasou.storage.service import StorageService
from kasou.store.desktop import DesktopStore
from kasou.store.sqlite import SQLiteStore
from kasou.store.tenancy import TenancyStore
from kasou.tenancy.hook import TenancyHook
from kasou.tenancy.service import TenancyService


@dataclass(frozen=True)
class Settings:
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    reserved_memory_mib: int = 512
    sandbox: bool = True          # as root: QEMU unprivileged under seccomp (isolation)
    metrics_interval: float = 5.0  # seconds between metrics samples of every VM


@dataclass
class Platform:
    layout: Layout
    store: SQLiteStore
    vms: VMService
    tenancy: TenancyService
    routers: list[APIRouter] = field(default_factory=list)
    root_routers: list[APIRouter] = field(default_factory=list)   # not under /api/v1
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
    # Desktops first: deleting a pool's VM directly is refused before any area acts.
    desktop_hook = DesktopHook(DesktopStore(store))
    hooks: list[VMHook] = [desktop_hook, TenancyHook(tenancy, store)]
    # Each area appends its hook to `hooks` here, before the VM service is made.
    # Storage first: a start that restores a saved state loads it before others act.
    storage = StorageService(layout, store)
    hooks.append(storage.hook)
    network = NetworkService(layout, store)
    hooks.append(NetworkHook(network))
    isolation = prepare_isolation(layout, store, host, settings.sandbox)
    hooks.append(isolation.hook)
    metrics = prepare_metrics(store, settings.metrics_interval)
    hooks.append(metrics_setup.hook(metrics))
    # An image's disk as a per-VM overlay, the cloud-init seed, the guest agent's facts.
    guest_hook = GuestAgentHook()
    hooks += [ImageDiskHook(layout), CloudInitHook(layout), guest_hook]
    vms = VMService(layout, store, host, capacity, hooks=hooks, launcher=isolation.launcher)
    platform = Platform(layout=layout, store=store, vms=vms, tenancy=tenancy)
    # Each area appends its router (and background tasks) to the platform here.
    storage.bind(vms)
    storage.core.store.quota_gate = tenancy.check_quota
    tenancy.usage.register(storage.core.store.usage)
    tenancy.holdings.append(lambda project: len(storage.core.store.volumes(project)))
    platform.routers.append(storage_routes.router(storage))
    isolation.join(platform)
    metrics_setup.join(metrics, platform)
    platform.routers.append(network_routes.router(network))
    platform.background.append((network.reconcile, _nothing))
    platform.routers.append(guest_routes.router(GuestService(vms, guest_hook)))
    platform.background.append((_nothing, guest_hook.close))
    console = ConsoleService(vms, ConsoleTokens(load_key(layout.root / "console.key")))
    platform.routers.append(console_routes.router(console))
    desktops = DesktopService(vms, console, tenancy, desktop_hook)
    platform.routers.append(desktop_routes.router(desktops))
    tenancy.holdings.append(desktops.pools_in)
    tenancy.user_holdings.append(desktops.held_by)
    return platform


async def _nothing() -> None:
    """Host network state outlives the daemon, like the VMs: nothing to stop."""
