"""The store interface: what the service needs to keep, whatever keeps it.

SQLite backs it on one host; a distributed store (etcd) will back it across hosts. Every
write that can race (create, state change) is atomic in the store itself: create fails
with Conflict on a taken name, `set_state` is a compare-and-set on the current state.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel

from kasou.spec import VMSpec
from kasou.state import VMState

DEFAULT_PROJECT = "default"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class VMRecord(BaseModel):
    id: str
    name: str
    project: str = DEFAULT_PROJECT
    spec: VMSpec
    state: VMState = VMState.STOPPED
    reason: str | None = None   # why it is in this state, when not the user's own doing
    created_at: str
    updated_at: str


class Store(Protocol):
    def create_vm(self, rec: VMRecord) -> None: ...

    def get_vm(self, ref: str, project: str = DEFAULT_PROJECT) -> VMRecord: ...

    def get_vm_by_id(self, vm_id: str) -> VMRecord: ...

    def list_vms(self, project: str | None = None) -> list[VMRecord]: ...

    def set_state(self, vm_id: str, state: VMState, reason: str | None = None,
                  expect: frozenset[VMState] | None = None) -> VMRecord: ...

    def delete_vm(self, vm_id: str) -> None: ...

    def close(self) -> None: ...
