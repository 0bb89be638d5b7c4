"""/api/v1/vms/{name}/exec and /guest: the guest agent, within the caller's project."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from kasou.api.security import Ctx, require
from kasou.guest.service import ExecRequest, ExecResult, GuestService
from kasou.tenancy.policy import Verb


def router(svc: GuestService) -> APIRouter:
    r = APIRouter()

    @r.post("/vms/{name}/exec")
    async def exec_in_guest(name: str, req: ExecRequest,
                            ctx: Ctx = require(Verb.OPERATE)) -> ExecResult:
        return await svc.exec(name, req, ctx.project)

    @r.get("/vms/{name}/guest")
    async def guest_info(name: str, ctx: Ctx = require(Verb.READ)) -> dict[str, Any]:
        return await svc.info(name, ctx.project)

    return r
