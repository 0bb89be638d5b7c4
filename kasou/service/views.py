"""What the service answers about a VM: one view for the API, CLI and web UI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from kasou.spec import VMSpec
from kasou.state import VMState


class VMView(BaseModel):
    id: str
    name: str
    project: str
    state: VMState
    reason: str | None = None
    pid: int | None = None
    accelerator: str | None = None
    machine: str
    vcpus: int
    memory: int            # MiB
    image: str | None = None
    os: str | None = None
    created_at: str
    updated_at: str
    started_at: str | None = None
    console: str | None = None
    serial_log: str
    spec: VMSpec
    extras: dict[str, Any] = {}   # facts from each area's hook: network, storage, limits...


class LogChunk(BaseModel):
    offset: int            # where this chunk starts in the serial log
    next_offset: int       # pass back to continue
    size: int              # the log's size now
    data: str              # utf-8 text, undecodable bytes replaced
