"""The store interface: what the service needs to keep, whatever keeps it.

SQLite backs it on one host; a distributed store (etcd) will back it across hosts. Every
write that can race (create, state change) is atomic in the store itself: create fails
with Conflict on a taken name, `set_state` is a compare-and-set on the current state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from kasou.spec import VMSpec
from kasou.state import VMState

DEFAULT_PROJECT = "default"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


T = TypeVar("T")


class ReadBatch:
    """One read of many VMs at once (a VM list): while it is open in the current thread
    or task, the area stores answer per-VM reads (a VM's disks, NICs, limits...) from one
    query per table for all the batch's VMs, made on first use, instead of one query per
    VM; other facts shared by the VMs (an image's manifest) are worked out once. Nothing
    is kept after the batch closes, so nothing can go stale beyond that one read."""

    def __init__(self, project: str | None, vm_ids: Collection[str]) -> None:
        self.project = project          # None: the VMs of every project
        self.vm_ids = frozenset(vm_ids)
        self._memo: dict[Any, Any] = {}

    def covers(self, vm_id: str) -> bool:
        return vm_id in self.vm_ids

    def memo(self, key: Any, make: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = make()
        value: T = self._memo[key]
        return value


_batch: ContextVar[ReadBatch | None] = ContextVar("kasou_read_batch", default=None)


@contextmanager
def read_batch(project: str | None, vm_ids: Collection[str]) -> Iterator[ReadBatch]:
    batch = ReadBatch(project, vm_ids)
    token = _batch.set(batch)
    try:
        yield batch
    finally:
        _batch.reset(token)


def current_batch(vm_id: str | None = None) -> ReadBatch | None:
    """The open batch (the one covering `vm_id`, if given), else None."""
    batch = _batch.get()
    if batch is None or (vm_id is not None and not batch.covers(vm_id)):
        return None
    return batch


def batch_memo(key: Any, make: Callable[[], T]) -> T:
    """make(), worked out once per open batch (every time when there is none)."""
    batch = _batch.get()
    return make() if batch is None else batch.memo(key, make)


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
