"""The storage part of a VM's life (a VMHook):

- validate: the template, --volume volumes and sizes make sense (before anything exists)
- created:  the VM's own disk (linked clone, full copy or blank) and its attachments
- plan:     the volume disks, and -incoming / -S when the start is a restore
- started:  load the saved state (suspended VM) or a snapshot (revert while stopped)
- deleted:  the VM's own volumes go with it; volumes it only used stay (without its
            snapshots); files given with --disk are never touched
"""

from __future__ import annotations

import dataclasses
from typing import Any

from qemu.qmp import QMPClient

from kasou.engine.plan import LaunchPlan
from kasou.engine.runtime import Runtime
from kasou.errors import Conflict, NotFound
from kasou.service import resolve as rs
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.state import VMState
from kasou.storage import argv as sargv
from kasou.storage import templates
from kasou.storage.core import StorageCore
from kasou.storage.disks import add_attachment, check_attachable, volume_disks
from kasou.storage.models import Volume
from kasou.storage.snapshots import Snapshots
from kasou.storage.suspend import Suspender
from kasou.storage.volumes import remove_volume
from kasou.store.base import VMRecord

S = VMState


class StorageHook(VMHook):
    name = "storage"

    def __init__(self, core: StorageCore, snapshots: Snapshots, suspender: Suspender) -> None:
        self.core = core
        self.store = core.store
        self.snapshots = snapshots
        self.suspender = suspender

    # -- create ------------------------------------------------------------------------------
    def validate(self, rec: VMRecord) -> None:
        spec = rec.spec
        count = len(spec.volumes)
        if spec.template:
            tpl = templates.template_of(self.core, spec.template, rec.project)
            templates.clone_size(tpl, spec.disk_size)
        if spec.template or spec.disk_size:
            count += 1
            self._check_root_name(rec)
        for name in spec.volumes:
            check_attachable(self.core, self.core.usable(name, rec.project), False, rec.id)
        machine = rs.machine_for(spec, rs.image_of(spec, self.core.vms.images_root))
        if count:
            sargv.check_slot(machine, count - 1)

    def _check_root_name(self, rec: VMRecord) -> None:
        name = templates.root_name(rec.name)
        try:
            self.store.volume(name, rec.project)
        except NotFound:
            return
        raise Conflict(f"VM {rec.name!r} would get its own disk as volume {name!r}, which "
                       "already exists", field="name")

    async def created(self, rec: VMRecord, revert: Reverter) -> None:
        revert.add(lambda: self.store.forget_vm(rec.id))
        slot = 0
        root = await self._root_disk(rec)
        if root is not None:
            revert.add(lambda: remove_volume(self.core, root))
            await add_attachment(self.core, rec, root, slot, boot=True)
            slot += 1
        for name in rec.spec.volumes:
            vol = self.core.usable(name, rec.project)
            await add_attachment(self.core, rec, vol, slot, boot=slot == 0)
            slot += 1

    async def _root_disk(self, rec: VMRecord) -> Volume | None:
        spec = rec.spec
        name = templates.root_name(rec.name)
        if spec.template:
            tpl = templates.template_of(self.core, spec.template, rec.project)
            return await templates.clone(self.core, tpl, name, rec.id, full=spec.full_clone,
                                         size=templates.clone_size(tpl, spec.disk_size))
        if spec.disk_size:
            return await templates.blank(self.core, None, name, rec.project, rec.id,
                                         spec.disk_size << 20)
        return None

    # -- start -------------------------------------------------------------------------------
    def plan(self, rec: VMRecord, plan: LaunchPlan) -> LaunchPlan:
        firmware_boot = plan.kernel is None and plan.machine != "microvm"
        disks = volume_disks(self.core, rec.id, firmware_boot)
        kind = None
        if rec.state == S.SUSPENDED:
            self.suspender.check_restorable(rec)
            kind = "incoming"
        elif self.store.pending_restore(rec.id) is not None:
            kind = "snapshot"
        extra = sargv.volume_args(plan.machine, disks) + sargv.restore_args(kind)
        return dataclasses.replace(plan, extra_args=(*plan.extra_args, *extra))

    async def prepare(self, rec: VMRecord, plan: LaunchPlan, revert: Reverter) -> None:
        if rec.state != S.SUSPENDED:
            # A state file left by a suspend that never finished (the daemon died while
            # saving) must never be restored later on top of disks that moved on.
            self.suspender.drop(rec.id)

    async def started(self, rec: VMRecord, rt: Runtime, qmp: QMPClient,
                      revert: Reverter) -> None:
        if rec.state == S.SUSPENDED:
            await self.suspender.restore(rec, qmp)
        elif self.store.pending_restore(rec.id) is not None:
            await self.snapshots.load_pending(rec, qmp)

    # -- delete ------------------------------------------------------------------------------
    async def deleted(self, rec: VMRecord) -> None:
        await self.snapshots.forget_vm(rec)
        owned = self.store.owned_by(rec.id)
        self.suspender.drop(rec.id)
        self.store.forget_vm(rec.id)
        for vol in owned:
            remove_volume(self.core, vol)

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        disks = []
        for att in self.store.attachments(rec.id):
            try:
                vol = self.store.volume_by_id(att.volume_id)
            except NotFound:
                continue
            disks.append({"volume": vol.name, "slot": att.slot, "format": vol.format,
                          "size": vol.size, "readonly": att.readonly,
                          "owned": vol.owner_vm == rec.id,
                          "limits": att.limits.model_dump(exclude_none=True)})
        out: dict[str, Any] = {"disks": disks,
                               "snapshots": [s.name for s in self.store.snapshots(rec.id)]}
        saved = self.suspender.saved(rec.id)
        if saved is not None:
            out["saved_state"] = saved.model_dump()
        pending = self.store.pending_restore(rec.id)
        if pending is not None:
            out["restores_snapshot_at_start"] = pending.snapshot
        return out
