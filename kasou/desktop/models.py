"""Desktop pools as users define and see them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kasou.names import Name
from kasou.spec import MemoryMiB

# A desktop is named POOL-N; the longest name must stay a valid VM name (63 characters).
MAX_POOL_NAME = 56
MAX_POOL_SIZE = 1000

Policy = Literal["reset", "keep"]
"""What happens to a returned desktop: `reset` gives the next user a fresh linked clone of
the template; `keep` leaves the desktop (its disk and, if running, its session) as it is."""


class PoolSpec(BaseModel):
    """A pool: `size` desktops, each a linked clone of `template` with a screen."""

    model_config = ConfigDict(extra="forbid")

    name: Name
    template: Name
    size: int = Field(ge=0, le=MAX_POOL_SIZE)
    policy: Policy = "reset"
    image: Name | None = None          # kernel-booted guests (e.g. tiny): the kernel's image
    vcpus: int = Field(default=1, ge=1, le=64)
    memory: MemoryMiB = 256

    @field_validator("name")
    @classmethod
    def _short_enough(cls, v: str) -> str:
        if len(v) > MAX_POOL_NAME:
            raise ValueError(f"must be at most {MAX_POOL_NAME} characters, so that its "
                             "desktops' names (NAME-N) are valid VM names")
        return v


class ResizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=0, le=MAX_POOL_SIZE)


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: Name


class DesktopView(BaseModel):
    pool: str
    project: str
    index: int
    vm: str                      # the desktop VM's name (in the pool's project)
    state: str                   # the VM's state
    user: str | None = None
    assigned_at: str | None = None


class PoolView(BaseModel):
    name: str
    project: str
    template: str
    size: int
    policy: Policy
    image: str | None
    vcpus: int
    memory: int
    created_at: str
    assigned: int
    desktops: list[DesktopView]


class ConsoleAccess(BaseModel):
    """A user's way into a desktop: a console token (valid about a minute) and where to use
    it. The dashboard's "My desktops" mints a fresh one whenever the user opens it."""

    pool: str
    project: str
    vm: str
    user: str
    token: str
    expires_at: float
    path: str
