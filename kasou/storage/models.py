"""Storage records: pools, volumes, a VM's disks, snapshots, saved states. Plain data.

Sizes are bytes. Names are unique per project (pools: per host) and safe as one path
component (kasou.paths.check_name).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Format = Literal["qcow2", "raw"]
VolumeState = Literal["ready", "creating", "importing"]
SnapshotKind = Literal["live", "disk"]

# QEMU refuses throttle values above this (THROTTLE_VALUE_MAX).
THROTTLE_MAX = 10**15


class Pool(BaseModel):
    """A directory holding volumes, one sub-directory per project."""

    id: str
    project: str           # pools are the host's; 'default' for now, kept for tenancy
    name: str
    path: str
    owned_dir: bool        # kasou made the directory, so it may remove it when empty
    created_at: str


class Volume(BaseModel):
    id: str
    project: str
    name: str
    pool_id: str
    path: str
    format: Format
    size: int                      # virtual size
    template: bool = False
    backing_id: str | None = None  # the template this linked clone is an overlay of
    owner_vm: str | None = None    # the VM that made it and deletes it with itself
    state: VolumeState = "ready"
    source: str = ""               # where it came from: blank, a URL, a file, a template
    created_at: str


class Limits(BaseModel):
    """Per-disk I/O limits (QEMU throttle group). None: no limit. A total limit and its
    read/write split exclude each other, as in QEMU."""

    model_config = ConfigDict(extra="forbid")

    iops_total: int | None = Field(default=None, ge=1, le=THROTTLE_MAX)
    iops_read: int | None = Field(default=None, ge=1, le=THROTTLE_MAX)
    iops_write: int | None = Field(default=None, ge=1, le=THROTTLE_MAX)
    bps_total: int | None = Field(default=None, ge=1, le=THROTTLE_MAX)
    bps_read: int | None = Field(default=None, ge=1, le=THROTTLE_MAX)
    bps_write: int | None = Field(default=None, ge=1, le=THROTTLE_MAX)

    @model_validator(mode="after")
    def _total_or_split(self) -> Limits:
        for kind in ("iops", "bps"):
            total = getattr(self, f"{kind}_total")
            split = getattr(self, f"{kind}_read") or getattr(self, f"{kind}_write")
            if total and split:
                raise ValueError(f"{kind}_total cannot be combined with {kind}_read/"
                                 f"{kind}_write")
        return self

    def qemu(self) -> dict[str, int]:
        """QEMU's ThrottleLimits: every key given, 0 meaning unlimited, so setting these
        live also clears the limits that were dropped."""
        return {k.replace("_", "-"): v or 0 for k, v in self.model_dump().items()}

    def is_set(self) -> bool:
        return any(self.model_dump().values())


class Attachment(BaseModel):
    """A volume plugged into a VM. The slot fixes its device names and PCI address, so a
    restored or reverted VM finds every disk where the saved state expects it."""

    vm_id: str
    volume_id: str
    project: str
    slot: int
    readonly: bool = False
    boot: bool = False             # boot from it first (firmware boot, no -kernel)
    limits: Limits = Field(default_factory=Limits)
    attached_at: str


class Snapshot(BaseModel):
    id: str
    project: str
    vm_id: str
    name: str
    kind: SnapshotKind             # live: RAM + devices + disks; disk: disks only
    volumes: list[str]             # ids of the volumes holding it (internal qcow2 snapshots)
    vmstate_volume: str | None     # where a live snapshot keeps RAM and device state
    vm_state: str                  # the VM's state when it was taken
    created_at: str


class SavedState(BaseModel):
    """A suspended VM's RAM and device state, written by QEMU's migration to a file."""

    vm_id: str
    project: str
    path: str
    size: int
    was_running: bool              # resume the guest after restoring, or leave it paused
    saved_at: str


class PendingRestore(BaseModel):
    """A live snapshot to load when a stopped VM next starts (revert while stopped)."""

    vm_id: str
    project: str
    snapshot: str
    created_at: str


class Progress(BaseModel):
    phase: str
    done: int = 0
    total: int | None = None
