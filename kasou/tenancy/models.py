"""Who may act, on what, and how much they may use."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from kasou.names import Name


class Role(StrEnum):
    """Per-project roles, strongest first. `admin` is global (a user flag), not a project role."""

    OWNER = "owner"
    MEMBER = "member"
    VIEWER = "viewer"


class Quota(BaseModel):
    """Per-project limits. None means unlimited."""

    model_config = ConfigDict(extra="forbid")

    vcpus: int | None = Field(default=None, ge=0)
    memory_mib: int | None = Field(default=None, ge=0)
    disk_bytes: int | None = Field(default=None, ge=0)
    vms: int | None = Field(default=None, ge=0)
    snapshots: int | None = Field(default=None, ge=0)
    forwards: int | None = Field(default=None, ge=0)


QUOTA_FIELDS = tuple(Quota.model_fields)


class ProjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    description: str = Field(default="", max_length=500)
    quota: Quota = Field(default_factory=Quota)



class Project(ProjectSpec):
    created_at: str


class UserSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    admin: bool = False



class User(UserSpec):
    created_at: str


class Membership(BaseModel):
    project: str
    user: str
    role: Role


class TokenInfo(BaseModel):
    """A token as listed: never the secret, which is shown once at creation."""

    id: str
    user: str
    description: str = ""
    created_at: str
    expires_at: str | None
    revoked: bool = False
    last_used_at: str | None = None


class NewToken(TokenInfo):
    token: str            # the secret, shown once


class Principal(BaseModel):
    """Who is asking: a user (through a token) or the local administrator (Unix socket)."""

    name: str
    admin: bool
    token_id: str | None = None
    roles: dict[str, Role] = Field(default_factory=dict)   # project -> role
    source: str = "unix"                                   # "unix" or the peer's address
