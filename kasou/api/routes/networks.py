"""/api/v1/networks, /api/v1/secgroups and NIC limits, within the caller's project."""

from __future__ import annotations

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict

from kasou.api.security import Ctx, require
from kasou.network.service import NetworkService
from kasou.network.spec import LimitsSpec, NetworkSpec, RuleSpec, SecGroupSpec
from kasou.network.views import NetworkView, NicView, SecGroupView
from kasou.tenancy.policy import Verb

READ = require(Verb.READ)
CREATE = require(Verb.CREATE)
DELETE = require(Verb.DELETE)
OPERATE = require(Verb.OPERATE)


class VMRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vm: str


def router(svc: NetworkService) -> APIRouter:
    r = APIRouter()
    _networks(r, svc)
    _secgroups(r, svc)

    @r.put("/vms/{name}/nics/{index}/limits")
    async def set_limits(name: str, limits: LimitsSpec, index: int = Path(ge=0, le=63),
                         ctx: Ctx = OPERATE) -> NicView:
        return await svc.set_limits(name, index, limits.model_dump(), ctx.project)

    return r


def _networks(r: APIRouter, svc: NetworkService) -> None:
    @r.get("/networks")
    def list_networks(ctx: Ctx = READ) -> list[NetworkView]:
        return svc.list_networks(ctx.project)

    @r.post("/networks", status_code=201)
    async def create_network(spec: NetworkSpec, ctx: Ctx = CREATE) -> NetworkView:
        return await svc.create_network(spec.model_dump(), ctx.project)

    @r.get("/networks/{name}")
    def show_network(name: str, ctx: Ctx = READ) -> NetworkView:
        return svc.show_network(name, ctx.project)

    @r.delete("/networks/{name}", status_code=204)
    async def delete_network(name: str, ctx: Ctx = DELETE) -> Response:
        await svc.delete_network(name, ctx.project)
        return Response(status_code=204)


def _secgroups(r: APIRouter, svc: NetworkService) -> None:
    @r.get("/secgroups")
    def list_secgroups(ctx: Ctx = READ) -> list[SecGroupView]:
        return svc.list_secgroups(ctx.project)

    @r.post("/secgroups", status_code=201)
    async def create_secgroup(spec: SecGroupSpec, ctx: Ctx = CREATE) -> SecGroupView:
        return await svc.create_secgroup(spec.model_dump(), ctx.project)

    @r.get("/secgroups/{name}")
    def show_secgroup(name: str, ctx: Ctx = READ) -> SecGroupView:
        return svc.show_secgroup(name, ctx.project)

    @r.delete("/secgroups/{name}", status_code=204)
    async def delete_secgroup(name: str, ctx: Ctx = DELETE) -> Response:
        await svc.delete_secgroup(name, ctx.project)
        return Response(status_code=204)

    @r.post("/secgroups/{name}/rules", status_code=201)
    async def add_rule(name: str, rule: RuleSpec, ctx: Ctx = CREATE) -> SecGroupView:
        return await svc.add_rule(name, rule.model_dump(), ctx.project)

    @r.delete("/secgroups/{name}/rules/{rule_id}")
    async def delete_rule(name: str, rule_id: int, ctx: Ctx = DELETE) -> SecGroupView:
        return await svc.delete_rule(name, rule_id, ctx.project)

    @r.post("/secgroups/{name}/attach")
    async def attach(name: str, ref: VMRef, ctx: Ctx = OPERATE) -> SecGroupView:
        return await svc.attach(name, ref.vm, ctx.project)

    @r.post("/secgroups/{name}/detach")
    async def detach(name: str, ref: VMRef, ctx: Ctx = OPERATE) -> SecGroupView:
        return await svc.detach(name, ref.vm, ctx.project)

