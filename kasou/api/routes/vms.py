"""/api/v1/vms: VM resources and their lifecycle actions, within the caller's project."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from kasou.api.security import Ctx, NameParam, require
from kasou.service.views import LogChunk, VMView
from kasou.service.vms import VMService
from kasou.spec import VMSpec
from kasou.tenancy.policy import Verb

READ = require(Verb.READ)
OPERATE = require(Verb.OPERATE)


def router(svc: VMService) -> APIRouter:
    r = APIRouter()

    @r.get("/vms")
    def list_vms(ctx: Ctx = READ, all_projects: bool = False) -> list[VMView]:
        if all_projects and ctx.principal.admin:
            return svc.list(None)
        return svc.list(ctx.project)

    @r.post("/vms", status_code=201)
    async def create_vm(spec: VMSpec, ctx: Ctx = require(Verb.CREATE)) -> VMView:
        return await svc.create(spec.model_dump(), ctx.project)

    @r.get("/vms/{name}")
    def show_vm(name: NameParam, ctx: Ctx = READ) -> VMView:
        return svc.show(name, ctx.project)

    @r.delete("/vms/{name}", status_code=204)
    async def delete_vm(name: NameParam, ctx: Ctx = require(Verb.DELETE)) -> Response:
        await svc.delete(name, ctx.project)
        return Response(status_code=204)

    @r.post("/vms/{name}/start")
    async def start_vm(name: NameParam, ctx: Ctx = OPERATE) -> VMView:
        return await svc.start(name, ctx.project)

    @r.post("/vms/{name}/stop")
    async def stop_vm(name: NameParam, force: bool = False,
                      timeout: float | None = Query(default=None, ge=0, le=3600),
                      ctx: Ctx = OPERATE) -> VMView:
        return await svc.stop(name, ctx.project, force=force, timeout=timeout)

    @r.post("/vms/{name}/kill")
    async def kill_vm(name: NameParam, ctx: Ctx = OPERATE) -> VMView:
        return await svc.kill(name, ctx.project)

    @r.post("/vms/{name}/pause")
    async def pause_vm(name: NameParam, ctx: Ctx = OPERATE) -> VMView:
        return await svc.pause(name, ctx.project)

    @r.post("/vms/{name}/resume")
    async def resume_vm(name: NameParam, ctx: Ctx = OPERATE) -> VMView:
        return await svc.resume(name, ctx.project)

    @r.post("/vms/{name}/reboot")
    async def reboot_vm(name: NameParam, ctx: Ctx = OPERATE) -> VMView:
        return await svc.reboot(name, ctx.project)

    @r.get("/vms/{name}/logs")
    def vm_logs(name: NameParam, offset: int = 0,
                limit: int = Query(default=1 << 20, ge=1, le=1 << 20),
                ctx: Ctx = READ) -> LogChunk:
        return svc.logs(name, offset, limit, ctx.project)

    @r.get("/vms/{name}/console")
    def vm_console(name: NameParam, ctx: Ctx = OPERATE) -> dict[str, Any]:
        return {"socket": svc.console_socket(name, ctx.project)}

    return r
