"""/api/v1/vms: VM resources and their lifecycle actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from kasou.service.views import LogChunk, VMView
from kasou.service.vms import VMService
from kasou.spec import VMSpec


def router(svc: VMService) -> APIRouter:
    r = APIRouter()

    @r.get("/vms")
    def list_vms() -> list[VMView]:
        return svc.list()

    @r.post("/vms", status_code=201)
    async def create_vm(spec: VMSpec) -> VMView:
        return await svc.create(spec.model_dump())

    @r.get("/vms/{name}")
    def show_vm(name: str) -> VMView:
        return svc.show(name)

    @r.delete("/vms/{name}", status_code=204)
    async def delete_vm(name: str) -> Response:
        await svc.delete(name)
        return Response(status_code=204)

    @r.post("/vms/{name}/start")
    async def start_vm(name: str) -> VMView:
        return await svc.start(name)

    @r.post("/vms/{name}/stop")
    async def stop_vm(name: str, force: bool = False,
                      timeout: float | None = Query(default=None, ge=0, le=3600)) -> VMView:
        return await svc.stop(name, force=force, timeout=timeout)

    @r.post("/vms/{name}/kill")
    async def kill_vm(name: str) -> VMView:
        return await svc.kill(name)

    @r.post("/vms/{name}/pause")
    async def pause_vm(name: str) -> VMView:
        return await svc.pause(name)

    @r.post("/vms/{name}/resume")
    async def resume_vm(name: str) -> VMView:
        return await svc.resume(name)

    @r.post("/vms/{name}/reboot")
    async def reboot_vm(name: str) -> VMView:
        return await svc.reboot(name)

    @r.get("/vms/{name}/logs")
    def vm_logs(name: str, offset: int = 0,
                limit: int = Query(default=1 << 20, ge=1, le=1 << 20)) -> LogChunk:
        return svc.logs(name, offset, limit)

    @r.get("/vms/{name}/console")
    def vm_console(name: str) -> dict[str, Any]:
        return {"socket": svc.console_socket(name)}

    return r
