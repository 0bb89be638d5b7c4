"""/api/v1/pools, /api/v1/volumes and a VM's disks, snapshots and saved state.

Pools are the host's (administrators add and remove them); volumes, disks and snapshots
live in the caller's project. Importing a file that sits on the daemon's host is for
administrators; anyone who may create may import from an http(s) URL.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict

from kasou.api.security import Ctx, authenticated, require
from kasou.service.views import VMView
from kasou.storage.imports import ImportRequest
from kasou.storage.models import Format, Limits
from kasou.storage.service import StorageService
from kasou.storage.views import DiskView, PoolView, SnapshotView, VolumeView
from kasou.storage.volumes import VolumeCreate
from kasou.tenancy.policy import Verb

READ = require(Verb.READ)
CREATE = require(Verb.CREATE)
DELETE = require(Verb.DELETE)
OPERATE = require(Verb.OPERATE)
ADMIN = require(Verb.ADMIN)


class PoolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    path: str


class Resize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int | str
    shrink: bool = False


class Convert(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    format: Format
    pool: str | None = None


class TemplateFlag(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: bool = True


class Attach(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volume: str
    readonly: bool = False
    limits: Limits | None = None


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    disk_only: bool = False


def router(svc: StorageService) -> APIRouter:
    r = APIRouter()
    _pools(r, svc)
    _volumes(r, svc)
    _disks(r, svc)
    _snapshots(r, svc)
    _suspend(r, svc)
    return r


def _pools(r: APIRouter, svc: StorageService) -> None:
    @r.get("/pools", dependencies=[authenticated()])
    def list_pools() -> list[PoolView]:
        return svc.pools.list()

    @r.post("/pools", status_code=201)
    def create_pool(body: PoolCreate, ctx: Ctx = ADMIN) -> PoolView:
        return svc.pools.create(body.name, body.path)

    @r.get("/pools/{name}", dependencies=[authenticated()])
    def show_pool(name: str) -> PoolView:
        return svc.pools.show(name)

    @r.delete("/pools/{name}", status_code=204)
    def delete_pool(name: str, ctx: Ctx = ADMIN) -> Response:
        svc.pools.delete(name)
        return Response(status_code=204)


def _volumes(r: APIRouter, svc: StorageService) -> None:
    @r.get("/volumes")
    def list_volumes(ctx: Ctx = READ) -> list[VolumeView]:
        return svc.volumes.list(ctx.project)

    @r.post("/volumes", status_code=201)
    async def create_volume(body: VolumeCreate, ctx: Ctx = CREATE) -> VolumeView:
        return await svc.volumes.create(body, ctx.project)

    @r.post("/volumes/import", status_code=201)
    async def import_volume(body: ImportRequest, ctx: Ctx = CREATE) -> VolumeView:
        return await svc.importer.run(body, ctx.project, host_files=ctx.principal.admin)

    @r.get("/volumes/{name}")
    def show_volume(name: str, ctx: Ctx = READ) -> VolumeView:
        return svc.volumes.show(name, ctx.project)

    @r.delete("/volumes/{name}", status_code=204)
    async def delete_volume(name: str, ctx: Ctx = DELETE) -> Response:
        await svc.volumes.delete(name, ctx.project)
        return Response(status_code=204)

    @r.post("/volumes/{name}/resize")
    async def resize_volume(name: str, body: Resize, ctx: Ctx = OPERATE) -> VolumeView:
        return await svc.volumes.resize(name, ctx.project, body.size, body.shrink)

    @r.post("/volumes/{name}/convert", status_code=201)
    async def convert_volume(name: str, body: Convert, ctx: Ctx = CREATE) -> VolumeView:
        return await svc.volumes.convert(name, ctx.project, body.name, body.format, body.pool)

    @r.post("/volumes/{name}/template")
    async def template_volume(name: str, body: TemplateFlag,
                              ctx: Ctx = OPERATE) -> VolumeView:
        return await svc.volumes.set_template(name, ctx.project, body.template)


def _disks(r: APIRouter, svc: StorageService) -> None:
    @r.get("/vms/{name}/disks")
    def list_disks(name: str, ctx: Ctx = READ) -> list[DiskView]:
        return svc.disks.list(name, ctx.project)

    @r.post("/vms/{name}/disks", status_code=201)
    async def attach_disk(name: str, body: Attach, ctx: Ctx = OPERATE) -> DiskView:
        return await svc.disks.attach(name, body.volume, ctx.project, readonly=body.readonly,
                                      limits=body.limits)

    @r.delete("/vms/{name}/disks/{volume}", status_code=204)
    async def detach_disk(name: str, volume: str, ctx: Ctx = OPERATE) -> Response:
        await svc.disks.detach(name, volume, ctx.project)
        return Response(status_code=204)

    @r.put("/vms/{name}/disks/{volume}/limits")
    async def disk_limits(name: str, volume: str, body: Limits,
                          ctx: Ctx = OPERATE) -> DiskView:
        return await svc.disks.set_limits(name, volume, ctx.project, body)


def _snapshots(r: APIRouter, svc: StorageService) -> None:
    @r.get("/vms/{name}/snapshots")
    def list_snapshots(name: str, ctx: Ctx = READ) -> list[SnapshotView]:
        return svc.snapshots.list(name, ctx.project)

    @r.post("/vms/{name}/snapshots", status_code=201)
    async def create_snapshot(name: str, body: SnapshotCreate,
                              ctx: Ctx = OPERATE) -> SnapshotView:
        return await svc.snapshots.create(name, ctx.project, body.name, body.disk_only)

    @r.post("/vms/{name}/snapshots/{snap}/revert")
    async def revert_snapshot(name: str, snap: str, ctx: Ctx = OPERATE) -> SnapshotView:
        return await svc.snapshots.revert(name, ctx.project, snap)

    @r.delete("/vms/{name}/snapshots/{snap}", status_code=204)
    async def delete_snapshot(name: str, snap: str, ctx: Ctx = OPERATE) -> Response:
        await svc.snapshots.delete(name, ctx.project, snap)
        return Response(status_code=204)


def _suspend(r: APIRouter, svc: StorageService) -> None:
    @r.post("/vms/{name}/suspend")
    async def suspend_vm(name: str, ctx: Ctx = OPERATE) -> VMView:
        return await svc.suspender.suspend(name, ctx.project)

    @r.post("/vms/{name}/discard-state")
    async def discard_state(name: str, ctx: Ctx = OPERATE) -> VMView:
        return await svc.suspender.discard(name, ctx.project)
