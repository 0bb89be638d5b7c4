"""/api/v1/projects, /users, /tokens, /audit."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from kasou.api.security import NameParam, caller
from kasou.errors import Forbidden, NotFound
from kasou.paths import NAME_PATTERN, check_name
from kasou.service.vms import VMService
from kasou.tenancy.models import (
    Membership,
    NewToken,
    Principal,
    Project,
    ProjectSpec,
    Quota,
    Role,
    TokenInfo,
    User,
    UserSpec,
)
from kasou.tenancy.policy import Verb, authorize
from kasou.tenancy.service import TenancyService

WHO = caller()


class RoleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_days: float | None = Field(default=30, gt=0, le=3650)
    description: str = Field(default="", max_length=200)


def router(ten: TenancyService, vms: VMService) -> APIRouter:
    r = APIRouter()

    # -- projects ------------------------------------------------------------------------
    @r.post("/projects", status_code=201)
    def create_project(spec: ProjectSpec, who: Principal = WHO) -> Project:
        authorize(who, Verb.ADMIN, None)
        return ten.create_project(spec)

    @r.get("/projects")
    def list_projects(who: Principal = WHO) -> list[Project]:
        return ten.visible_projects(who)

    @r.get("/projects/{name}")
    def show_project(name: NameParam, who: Principal = WHO) -> dict[str, Any]:
        check_name(name, "project")
        authorize(who, Verb.READ, name)
        return ten.describe_project(name)

    @r.delete("/projects/{name}", status_code=204)
    def delete_project(name: NameParam, who: Principal = WHO) -> Response:
        authorize(who, Verb.ADMIN, None)
        ten.delete_project(name)
        return Response(status_code=204)

    @r.put("/projects/{name}/quota")
    def set_quota(name: NameParam, quota: Quota, who: Principal = WHO) -> Project:
        authorize(who, Verb.ADMIN, None)
        return ten.set_quota(name, quota)

    @r.put("/projects/{name}/members/{user}")
    def add_member(name: NameParam, user: NameParam, body: RoleBody,
                   who: Principal = WHO) -> Membership:
        check_name(name, "project")
        authorize(who, Verb.MANAGE, name)
        return ten.add_member(name, user, body.role)

    @r.delete("/projects/{name}/members/{user}", status_code=204)
    def remove_member(name: NameParam, user: NameParam, who: Principal = WHO) -> Response:
        check_name(name, "project")
        authorize(who, Verb.MANAGE, name)
        ten.store.remove_member(name, user)
        return Response(status_code=204)

    # -- users and tokens ----------------------------------------------------------------
    @r.post("/users", status_code=201)
    def create_user(spec: UserSpec, who: Principal = WHO) -> User:
        authorize(who, Verb.ADMIN, None)
        return ten.create_user(spec)

    @r.get("/users")
    def list_users(who: Principal = WHO) -> list[User]:
        authorize(who, Verb.ADMIN, None)
        return ten.store.list_users()

    @r.delete("/users/{name}", status_code=204)
    def delete_user(name: NameParam, who: Principal = WHO) -> Response:
        authorize(who, Verb.ADMIN, None)
        ten.delete_user(name)
        return Response(status_code=204)

    @r.post("/users/{name}/tokens", status_code=201)
    def create_token(name: NameParam, body: TokenRequest, who: Principal = WHO) -> NewToken:
        if not who.admin and who.name != name:
            raise Forbidden(f"{who.name} may create tokens only for itself")
        return ten.create_token(name, expires_days=body.expires_days,
                                description=body.description)

    @r.get("/tokens")
    def list_tokens(who: Principal = WHO) -> list[TokenInfo]:
        return ten.store.list_tokens(None if who.admin else who.name)

    @r.delete("/tokens/{token_id}", status_code=204)
    def revoke_token(token_id: NameParam, who: Principal = WHO) -> Response:
        row = ten.store.token_row(token_id)
        if row is None or (not who.admin and row[0].user != who.name):
            raise NotFound(f"no token with id {token_id!r}")
        ten.revoke_token(token_id)
        return Response(status_code=204)

    # -- audit -------------------------------------------------------------------------------
    @r.get("/audit")
    def audit(request: Request,
              project: str | None = Query(default=None, pattern=NAME_PATTERN),
              since: str | None = None,
              limit: int = 1000, who: Principal = WHO) -> list[dict[str, Any]]:
        if project is None:
            authorize(who, Verb.ADMIN, None)
        else:
            check_name(project, "project")
            authorize(who, Verb.MANAGE, project)
        return ten.audit(project, since, max(1, min(limit, 100_000)))

    @r.get("/audit/verify")
    def verify(who: Principal = WHO) -> dict[str, Any]:
        authorize(who, Verb.ADMIN, None)
        return ten.verify_audit()

    return r
