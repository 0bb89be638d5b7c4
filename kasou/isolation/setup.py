"""How the isolation area joins the platform (called from service/platform.py): its hook
and launcher go in before the VM service is made, its service and routes after."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kasou.host.cgroups import detect
from kasou.host.probe import HostInfo
from kasou.isolation.hook import IsolationHook
from kasou.isolation.sandbox import SandboxLauncher
from kasou.isolation.service import IsolationService
from kasou.paths import Layout
from kasou.store.isolation import LimitsStore
from kasou.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from kasou.service.platform import Platform


@dataclass
class Isolation:
    hook: IsolationHook
    launcher: SandboxLauncher | None
    store: LimitsStore
    service: IsolationService | None = None

    def join(self, platform: Platform) -> IsolationService:
        from kasou.api.routes import isolation as routes

        self.service = IsolationService(platform.vms, self.hook, self.store)
        platform.routers.append(routes.router(self.service))

        async def sweep() -> None:
            self.hook.sweep(platform.vms.store.list_vms(None))

        async def nothing() -> None:
            return None

        platform.background.append((sweep, nothing))
        return self.service


def prepare(layout: Layout, store: SQLiteStore, host: HostInfo, sandbox: bool) -> Isolation:
    """cgroups and the sandbox need root; an unprivileged kasou runs VMs without them."""
    root = os.geteuid() == 0
    cgroups = detect() if root else None
    sandboxed = sandbox and root
    limits = LimitsStore(store)
    hook = IsolationHook(layout, limits, cgroups, host, sandboxed=sandboxed)
    return Isolation(hook=hook, launcher=SandboxLauncher() if sandboxed else None, store=limits)
