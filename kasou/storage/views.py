"""What the storage service answers: one view per resource for the API, CLI and web UI."""

from __future__ import annotations

from pydantic import BaseModel

from kasou.storage.models import Format, Limits, Progress, SnapshotKind, VolumeState


class PoolView(BaseModel):
    name: str
    path: str
    volumes: int
    allocated: int          # bytes the pool's volumes take on disk
    capacity: int           # of the file system holding the pool
    free: int
    created_at: str


class VolumeView(BaseModel):
    name: str
    project: str
    pool: str
    path: str
    format: Format
    size: int               # virtual size
    allocated: int          # bytes on disk
    template: bool
    backing: str | None     # the template a linked clone is an overlay of
    dependants: list[str]   # linked clones of this template
    owner_vm: str | None    # the VM that made it (deleted with it)
    attached_to: list[str]  # VMs using it
    state: VolumeState
    progress: Progress | None = None
    source: str
    created_at: str


class DiskView(BaseModel):
    volume: str
    slot: int
    path: str
    format: Format
    size: int
    readonly: bool
    boot: bool
    serial: str             # the guest sees it in /sys/block/vdX/serial
    owned: bool             # made for this VM; deleted with it
    limits: Limits


class SnapshotView(BaseModel):
    name: str
    vm: str
    kind: SnapshotKind
    volumes: list[str]
    vm_state: str
    created_at: str


class SavedStateView(BaseModel):
    path: str
    size: int
    was_running: bool
    saved_at: str
