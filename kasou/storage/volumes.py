"""Volumes: create (qcow2/raw), resize, convert, mark as template, delete.

A volume's row is written first with state `creating` (which reserves the name), then its
file; a failure removes both. Deleting is refused while a VM uses the volume or while
linked clones depend on it (a template).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kasou.engine import qmp_storage
from kasou.errors import Conflict, InvalidSpec
from kasou.names import Name
from kasou.paths import check_name
from kasou.service.revert import Reverter
from kasou.state import VMState
from kasou.storage import qemu_img
from kasou.storage.argv import node
from kasou.storage.core import StorageCore, new_id
from kasou.storage.models import Format, Pool, Progress, Volume
from kasou.storage.views import VolumeView
from kasou.store.base import now_iso
from kasou.units import format_size, parse_size

S = VMState
TEMPLATE_MODE = 0o444
VOLUME_MODE = 0o640
STILL = frozenset({S.STOPPED, S.CRASHED})


def parse_bytes(value: int | str, field: str = "size") -> int:
    """Bytes from 4G / 512M / 1048576 (a bare number is bytes); a multiple of 512."""
    try:
        size = value if isinstance(value, int) else parse_size(value, default_unit="")
    except ValueError as e:
        raise InvalidSpec(f"{field}: {e}", field=field) from None
    if isinstance(value, int) and size <= 0:
        raise InvalidSpec(f"{field}: must be greater than zero", field=field)
    if size % 512:
        raise InvalidSpec(f"{field}: must be a multiple of 512 bytes", field=field)
    return size


class VolumeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    size: int | str
    format: Format = "qcow2"
    pool: str | None = None



def new_volume(pool: Pool, project: str, name: str, path: Path, fmt: Format, size: int,
               source: str, **extra: Any) -> Volume:
    return Volume(id=new_id(), project=project, name=name, pool_id=pool.id, path=str(path),
                  format=fmt, size=size, state="creating", source=source,
                  created_at=now_iso(), **extra)


async def make(core: StorageCore, vol: Volume, build: Callable[[], Awaitable[None]],
               reserve: Callable[[], Awaitable[None]] | None = None) -> Volume:
    """Insert vol's row (reserving the name; `reserve` does it when more must be checked
    with it), run build() to write its file, mark it ready; on any failure neither row
    nor file remains."""
    if reserve is None:
        core.store.add_volume(vol)
    else:
        await reserve()
    async with Reverter() as revert:
        revert.add(lambda: core.store.delete_volume(vol.id))
        revert.add(lambda: _unlink(vol.path))
        await build()
        info = await qemu_img.info(vol.path, vol.format)
        ready = vol.model_copy(update={"state": "ready", "size": info.virtual_size})
        os.chmod(vol.path, VOLUME_MODE)
        core.store.update_volume(ready)
        revert.success()
    return ready


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Volumes:
    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self.store = core.store

    def list(self, project: str) -> list[VolumeView]:
        return [self.core.view(v) for v in self.store.volumes(project)]

    def show(self, name: str, project: str) -> VolumeView:
        return self.core.view(self.store.volume(name, project))

    async def create(self, req: VolumeCreate, project: str) -> VolumeView:
        size = parse_bytes(req.size)
        pool = self.core.pool_of(req.pool)
        path = self.core.new_path(pool, project, req.name, req.format)
        vol = new_volume(pool, project, req.name, path, req.format, size, "blank")
        done = await make(self.core, vol,
                          lambda: qemu_img.create(str(path), req.format, size))
        return self.core.view(done)

    # -- resize ----------------------------------------------------------------------------
    async def resize(self, name: str, project: str, size_in: int | str,
                     shrink: bool = False) -> VolumeView:
        size = parse_bytes(size_in)
        vol = self.core.usable(name, project)
        atts = self.store.attachments_of_volume(vol.id)
        if len(atts) == 1 and not atts[0].readonly:
            rec = self.core.vms.store.get_vm_by_id(atts[0].vm_id)
            if rec.state in (S.RUNNING, S.PAUSED):
                return await self._resize_live(vol, rec.id, size, atts[0].slot)
        async with self.core.vol_lock(vol.id):
            vol = self._check_resize(self.store.volume_by_id(vol.id), size, shrink)
            for att in self.store.attachments_of_volume(vol.id):
                rec = self.core.vms.store.get_vm_by_id(att.vm_id)
                if rec.state not in STILL:
                    raise Conflict(f"volume {vol.name!r} is in use by VM {rec.name!r} "
                                   f"({rec.state.value}); stop it first", field="volume")
            if size != vol.size:
                await qemu_img.resize(vol.path, vol.format, size, shrink=size < vol.size)
                vol = await self._resized(vol)
        return self.core.view(vol)

    def _check_resize(self, vol: Volume, size: int, shrink: bool) -> Volume:
        if vol.template:
            raise Conflict(f"volume {vol.name!r} is a template, which stays as it is; "
                           "clone it or un-mark it first", field="volume")
        if size < vol.size and not shrink:
            raise InvalidSpec(f"size: {format_size(size)} is smaller than volume "
                              f"{vol.name!r} ({format_size(vol.size)}); shrinking loses the "
                              "data at the end: pass --shrink to do it anyway", field="size")
        return vol

    async def _resize_live(self, vol: Volume, vm_id: str, size: int, slot: int) -> VolumeView:
        async with self.core.vms.lock(vm_id), self.core.vol_lock(vol.id):
            rec = self.core.vms.store.get_vm_by_id(vm_id)
            vol = self._check_resize(self.store.volume_by_id(vol.id), size, False)
            if size < vol.size:
                raise Conflict(f"volume {vol.name!r} is in use by running VM {rec.name!r}: "
                               "stop it to shrink", field="size")
            if size != vol.size:
                sup = self.core.vms.supervisor(rec)
                # The top (throttle) node: resizing under it would not tell the guest.
                await qmp_storage.block_resize(sup.qmp, node(slot), size)
                vol = await self._resized(vol)
        return self.core.view(vol)

    async def _resized(self, vol: Volume) -> Volume:
        info = await qemu_img.info(vol.path, vol.format)
        new = vol.model_copy(update={"size": info.virtual_size})
        self.store.update_volume(new)
        return new

    # -- convert ---------------------------------------------------------------------------
    async def convert(self, name: str, project: str, new_name: str, fmt: Format,
                      pool_name: str | None = None) -> VolumeView:
        check_name(new_name, "new_name")
        src = self.core.usable(name, project)
        for att in self.store.attachments_of_volume(src.id):
            rec = self.core.vms.store.get_vm_by_id(att.vm_id)
            if not att.readonly and rec.state not in STILL:
                raise Conflict(f"volume {name!r} is being written by VM {rec.name!r}; stop "
                               "it first for a consistent copy", field="volume")
        pool = self.core.pool_of(pool_name) if pool_name else self.store.pool_by_id(src.pool_id)
        path = self.core.new_path(pool, project, new_name, fmt)
        vol = new_volume(pool, project, new_name, path, fmt, src.size,
                         f"converted from volume {src.name}")

        async def build() -> None:
            try:
                await qemu_img.convert(src.path, src.format, str(path), fmt,
                                       progress=progress_into(self.core, vol.id, "converting"))
            finally:
                self.core.progress.pop(vol.id, None)

        return self.core.view(await make(self.core, vol, build))

    # -- templates ---------------------------------------------------------------------------
    async def set_template(self, name: str, project: str, on: bool) -> VolumeView:
        vol = self.core.usable(name, project)
        async with self.core.vol_lock(vol.id):
            vol = self.store.volume_by_id(vol.id)
            if on == vol.template:
                return self.core.view(vol)
            if on:
                self._check_can_template(vol)
            else:
                self._check_no_dependants(vol, "un-marked")
            os.chmod(vol.path, TEMPLATE_MODE if on else VOLUME_MODE)
            # A template is nobody's own disk any more: deleting a VM never takes it.
            vol = vol.model_copy(update={"template": on, "owner_vm": None})
            self.store.update_volume(vol)
        return self.core.view(vol)

    def _check_can_template(self, vol: Volume) -> None:
        atts = self.store.attachments_of_volume(vol.id)
        if atts:
            users = ", ".join(self.core.vm_name(a.vm_id) for a in atts)
            raise Conflict(f"volume {vol.name!r} is attached to {users}; detach it before "
                           "making it a template", field="volume")

    def _check_no_dependants(self, vol: Volume, action: str) -> None:
        deps = self.store.dependants(vol.id)
        if deps:
            names = ", ".join(d.name for d in deps[:5])
            raise Conflict(f"template {vol.name!r} cannot be {action}: {len(deps)} linked "
                           f"clone(s) depend on it ({names})", field="volume")

    # -- delete ------------------------------------------------------------------------------
    async def delete(self, name: str, project: str) -> None:
        vol = self.store.volume(name, project)
        if vol.state != "ready":
            raise Conflict(f"volume {name!r} is still {vol.state}", field="volume")
        async with self.core.vol_lock(vol.id):
            vol = self.store.volume_by_id(vol.id)
            atts = self.store.attachments_of_volume(vol.id)
            if atts:
                users = ", ".join(self.core.vm_name(a.vm_id) for a in atts)
                raise Conflict(f"volume {name!r} is attached to VM {users}; detach it first",
                               field="volume")
            self._check_no_dependants(vol, "deleted")
            remove_volume(self.core, vol)
        self.core.forget_lock(vol.id)


def remove_volume(core: StorageCore, vol: Volume) -> None:
    """The file, then the row: a row without a file would be a lie; a stray file is not
    kasou's to guess about, so it goes first."""
    _unlink(vol.path)
    core.store.delete_volume(vol.id)


def progress_into(core: StorageCore, vol_id: str, phase: str) -> Callable[[float], None]:
    """A callback that publishes a fraction done as the volume's progress."""
    core.progress[vol_id] = Progress(phase=phase, done=0, total=1000)

    def update(fraction: float) -> None:
        core.progress[vol_id] = Progress(phase=phase, done=int(fraction * 1000), total=1000)
    return update
