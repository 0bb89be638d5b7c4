"""/api/v1/vms/{name}/limits and /api/v1/host/ksm.

Reading a VM's limits is for anyone who may read the VM. Changing them, and switching KSM,
is host policy (a tenant raising its own weight or pinning onto a busy core takes from the
others), so those routes declare no verb: administrators only.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from kasou.api.security import Ctx, authenticated, require
from kasou.host.ksm import KsmInfo
from kasou.isolation.service import IsolationService, LimitsView
from kasou.store.base import DEFAULT_PROJECT
from kasou.tenancy.policy import Verb

READ = require(Verb.READ)


def router(svc: IsolationService) -> APIRouter:
    r = APIRouter()

    @r.get("/vms/{name}/limits")
    def get_limits(name: str, ctx: Ctx = READ) -> LimitsView:
        return svc.get(name, ctx.project)

    @r.patch("/vms/{name}/limits")
    async def set_limits(name: str, changes: dict[str, Any] = Body(
            ..., examples=[{"cpu_limit": 0.25, "pin": "0", "memory_target": "128M"}]),
            project: str = DEFAULT_PROJECT) -> LimitsView:
        """Fields given are set (null clears one); the rest are kept. Live when running."""
        return await svc.set(name, changes, project)

    @r.get("/host/ksm", dependencies=[authenticated()])
    def get_ksm() -> KsmInfo:
        return svc.ksm()

    @r.post("/host/ksm")
    def set_ksm(on: bool, unmerge: bool = False) -> KsmInfo:
        return svc.set_ksm(on, unmerge)

    return r
