"""/api/v1/desktop-pools (VDI pools, within the caller's project) and /api/v1/desktops
(the caller's own desktops, whatever their project roles).

Handing a desktop to a user grants them its screen, so assign and return need the
project's `manage` verb (owners), like adding a member; making and removing desktops needs
create/delete like any VM.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from kasou.api.security import Ctx, NameParam, caller, require
from kasou.desktop.models import (
    AssignRequest,
    ConsoleAccess,
    DesktopView,
    PoolSpec,
    PoolView,
    ResizeRequest,
)
from kasou.desktop.service import DesktopService
from kasou.tenancy.models import Principal
from kasou.tenancy.policy import Verb

READ = require(Verb.READ)
MANAGE = require(Verb.MANAGE)


def router(svc: DesktopService) -> APIRouter:
    r = APIRouter()

    @r.get("/desktop-pools")
    def list_pools(ctx: Ctx = READ, all_projects: bool = False) -> list[PoolView]:
        return svc.pools(None if all_projects and ctx.principal.admin else ctx.project)

    @r.post("/desktop-pools", status_code=201)
    async def create_pool(spec: PoolSpec, ctx: Ctx = require(Verb.CREATE)) -> PoolView:
        return await svc.create(spec, ctx.project)

    @r.get("/desktop-pools/{name}")
    def show_pool(name: NameParam, ctx: Ctx = READ) -> PoolView:
        return svc.show(name, ctx.project)

    @r.delete("/desktop-pools/{name}", status_code=204)
    async def delete_pool(name: NameParam, force: bool = False,
                          ctx: Ctx = require(Verb.DELETE)) -> Response:
        await svc.delete(name, ctx.project, force=force)
        return Response(status_code=204)

    @r.post("/desktop-pools/{name}/resize")
    async def resize_pool(name: NameParam, body: ResizeRequest,
                          ctx: Ctx = require(Verb.CREATE)) -> PoolView:
        return await svc.resize(name, body.size, ctx.project)

    @r.post("/desktop-pools/{name}/assign")
    async def assign(name: NameParam, body: AssignRequest, ctx: Ctx = MANAGE) -> ConsoleAccess:
        return await svc.assign(name, body.user, ctx.project)

    @r.post("/desktop-pools/{name}/return")
    async def give_back(name: NameParam, body: AssignRequest,
                        ctx: Ctx = MANAGE) -> DesktopView:
        return await svc.unassign(name, body.user, ctx.project)

    @r.get("/desktops")
    def my_desktops(who: Principal = caller()) -> list[DesktopView]:
        return svc.mine(who)

    @r.post("/desktops/{project}/{pool}/open")
    async def open_desktop(project: NameParam, pool: NameParam,
                           who: Principal = caller()) -> ConsoleAccess:
        return await svc.open_mine(who, pool, project)

    return r
