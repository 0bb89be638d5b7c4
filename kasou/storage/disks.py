"""A VM's disks from volumes: attach and detach (hot-plugged on a running pc/q35 VM),
per-disk I/O limits (changed live through the throttle group), and the disk list a
launch plan gets.

Sharing rules: a volume is written by at most one VM; read-only attachments may share a
volume with other read-only ones; templates are only used through clones.
"""

from __future__ import annotations

import contextlib

from qemu.qmp import QMPClient

from kasou.engine import qmp_storage
from kasou.errors import Conflict, InvalidSpec, InvalidState, QMPFailure
from kasou.isolation.sandbox import pass_file
from kasou.service import resolve as rs
from kasou.service.revert import Reverter
from kasou.state import VMState, check
from kasou.storage import argv as sargv
from kasou.storage.core import StorageCore, serial
from kasou.storage.models import Attachment, Limits, Volume
from kasou.storage.views import DiskView
from kasou.store.base import VMRecord, now_iso

S = VMState
LIVE_DISKS = frozenset({S.RUNNING, S.PAUSED})
UNPLUG_TIMEOUT = 30.0


def machine_of(core: StorageCore, rec: VMRecord) -> str:
    with contextlib.suppress(InvalidState):   # a live VM's machine is in its runtime
        return core.vms.supervisor(rec).rt.machine
    return rs.machine_for(rec.spec, rs.image_of(rec.spec, core.vms.images_root))


def check_attachable(core: StorageCore, vol: Volume, readonly: bool, vm_id: str) -> None:
    if vol.template:
        raise Conflict(f"volume {vol.name!r} is a template: give a VM its own copy with "
                       f"`--from {vol.name}`", field="volume")
    for att in core.store.attachments_of_volume(vol.id):
        if att.vm_id == vm_id:
            raise Conflict(f"volume {vol.name!r} is already attached to this VM",
                           field="volume")
        if not (readonly and att.readonly):
            mode = "read-only" if att.readonly else "writable"
            raise Conflict(f"volume {vol.name!r} is attached ({mode}) to VM "
                           f"{core.vm_name(att.vm_id)!r}; a volume is written by one VM "
                           "at a time", field="volume")


def free_slot(core: StorageCore, vm_id: str, machine: str) -> int:
    used = {a.slot for a in core.store.attachments(vm_id)}
    for slot in range(sargv.MAX_SLOTS[machine]):
        if slot not in used:
            return slot
    raise Conflict(f"machine {machine} takes at most {sargv.MAX_SLOTS[machine]} volumes",
                   field="volume")


async def add_attachment(core: StorageCore, rec: VMRecord, vol: Volume, slot: int, *,
                         readonly: bool = False, boot: bool = False,
                         limits: Limits | None = None) -> Attachment:
    """Check and insert under the volume's lock, so two VMs cannot both take it."""
    async with core.vol_lock(vol.id):
        vol = core.store.volume_by_id(vol.id)
        check_attachable(core, vol, readonly, rec.id)
        att = Attachment(vm_id=rec.id, volume_id=vol.id, project=rec.project, slot=slot,
                         readonly=readonly, boot=boot, limits=limits or Limits(),
                         attached_at=now_iso())
        core.store.attach(att)
    return att


def backing_chain(core: StorageCore, vol: Volume) -> tuple[tuple[str, str], ...]:
    """(path, format) of the templates under a linked clone, nearest first."""
    chain: list[tuple[str, str]] = []
    seen = {vol.id}
    while vol.backing_id and vol.backing_id not in seen:
        vol = core.store.volume_by_id(vol.backing_id)
        seen.add(vol.id)
        chain.append((vol.path, vol.format))
    return tuple(chain)


def volume_disk(core: StorageCore, vol: Volume, att: Attachment,
                firmware_boot: bool) -> sargv.VolumeDisk:
    return sargv.VolumeDisk(slot=att.slot, path=vol.path, format=vol.format,
                            readonly=att.readonly, serial=serial(vol),
                            bootindex=0 if att.boot and firmware_boot else None,
                            limits=att.limits.qemu() if att.limits.is_set() else {},
                            backing=backing_chain(core, vol))


def volume_disks(core: StorageCore, vm_id: str, firmware_boot: bool) -> list[sargv.VolumeDisk]:
    return [volume_disk(core, core.store.volume_by_id(a.volume_id), a, firmware_boot)
            for a in core.store.attachments(vm_id)]


class Disks:
    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self.store = core.store

    def list(self, ref: str, project: str) -> list[DiskView]:
        rec = self.core.vm(ref, project)
        return [self._view(a) for a in self.store.attachments(rec.id)]

    def _view(self, att: Attachment) -> DiskView:
        vol = self.store.volume_by_id(att.volume_id)
        return DiskView(volume=vol.name, slot=att.slot, path=vol.path, format=vol.format,
                        size=vol.size, readonly=att.readonly, boot=att.boot,
                        serial=serial(vol), owned=vol.owner_vm == att.vm_id,
                        limits=att.limits)

    # -- attach ------------------------------------------------------------------------------
    async def attach(self, ref: str, volume: str, project: str, *, readonly: bool = False,
                     limits: Limits | None = None) -> DiskView:
        rec = self.core.vm(ref, project)
        vol = self.core.usable(volume, project)
        async with self.core.vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            check(rec.name, rec.state, "change disks of")
            machine = machine_of(self.core, rec)
            if rec.state in LIVE_DISKS and machine == "microvm":
                raise _no_hotplug(rec)
            async with Reverter() as revert:
                att = await add_attachment(self.core, rec, vol, free_slot(
                    self.core, rec.id, machine), readonly=readonly, limits=limits)
                revert.add(lambda: self.store.detach(rec.id, vol.id))
                if rec.state in LIVE_DISKS:
                    qmp = self.core.vms.supervisor(rec).qmp
                    await _plug(qmp, machine, volume_disk(self.core, vol, att, False),
                                revert)
                revert.success()
        return self._view(att)

    # -- detach ------------------------------------------------------------------------------
    async def detach(self, ref: str, volume: str, project: str) -> None:
        rec = self.core.vm(ref, project)
        vol = self.store.volume(volume, project)
        async with self.core.vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            check(rec.name, rec.state, "change disks of")
            att = self._attachment(rec, vol)
            if rec.state in LIVE_DISKS:
                if machine_of(self.core, rec) == "microvm":
                    raise _no_hotplug(rec)
                await _unplug(self.core.vms.supervisor(rec).qmp,
                              volume_disk(self.core, vol, att, False), vol.name)
            self.store.detach(rec.id, vol.id)

    def _attachment(self, rec: VMRecord, vol: Volume) -> Attachment:
        for att in self.store.attachments(rec.id):
            if att.volume_id == vol.id:
                return att
        raise InvalidSpec(f"volume: {vol.name!r} is not attached to VM {rec.name!r}",
                          field="volume")

    # -- limits ------------------------------------------------------------------------------
    async def set_limits(self, ref: str, volume: str, project: str,
                         limits: Limits) -> DiskView:
        rec = self.core.vm(ref, project)
        vol = self.store.volume(volume, project)
        async with self.core.vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            att = self._attachment(rec, vol)
            # Throttle settings are not part of a saved state: a suspended VM gets the
            # new ones when it is restored.
            if rec.state in LIVE_DISKS:
                qmp = self.core.vms.supervisor(rec).qmp
                await qmp_storage.set_throttle(qmp, sargv.group_id(att.slot), limits.qemu())
            self.store.set_limits(rec.id, vol.id, limits)
            att = att.model_copy(update={"limits": limits})
        return self._view(att)


def _no_hotplug(rec: VMRecord) -> Conflict:
    return Conflict(f"VM {rec.name!r} is a microvm, which has no hot-plug bus: stop it to "
                    "change its disks, or use machine pc or q35", field="volume")


async def _plug(qmp: QMPClient, machine: str, disk: sargv.VolumeDisk, revert: Reverter) -> None:
    group = sargv.throttle_group(disk)
    await qmp_storage.object_add(qmp, group)
    revert.add(lambda: qmp_storage.object_del(qmp, group["id"]))
    for bd in sargv.blockdevs(disk):
        if bd["driver"] == "file":
            # QEMU may be sandboxed (no opening host paths): hand it the file instead.
            bd = {**bd, "filename": await pass_file(qmp, bd["filename"],
                                                    writable=not bd["read-only"])}
        await qmp_storage.blockdev_add(qmp, bd)
        name = bd["node-name"]
        revert.add(lambda name=name: qmp_storage.blockdev_del(qmp, name))
    await qmp_storage.device_add(qmp, sargv.device(machine, disk))


async def _unplug(qmp: QMPClient, disk: sargv.VolumeDisk, volume: str) -> None:
    dev = sargv.device_id(disk.slot)
    if dev in await qmp_storage.device_ids(qmp):
        gone = await qmp_storage.device_del(qmp, dev, UNPLUG_TIMEOUT)
        if not gone:
            raise Conflict(f"the guest did not release volume {volume!r} within "
                           f"{UNPLUG_TIMEOUT:.0f}s (it needs ACPI PCI hot-plug support); "
                           "it stays attached: try again, or stop the VM", field="volume")
    for bd in reversed(sargv.blockdevs(disk)):
        with contextlib.suppress(QMPFailure):   # a retry finds some already gone
            await qmp_storage.blockdev_del(qmp, bd["node-name"])
    with contextlib.suppress(QMPFailure):
        await qmp_storage.object_del(qmp, sargv.group_id(disk.slot))
