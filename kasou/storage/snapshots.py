"""VM snapshots, kept inside the VM's qcow2 volumes (internal snapshots, one tag per
volume).

- live (the VM runs, the default): RAM, device state and every disk, taken by QEMU 7.2's
  `snapshot-save` job while the guest is paused for it. Reverting (`snapshot-load`) brings
  the guest back exactly: a file written since is gone, a process started before is back.
- disk-only (the VM is stopped, or `disk_only`): every disk at one instant. On a running
  VM the guest's file systems are frozen through the guest agent around it when an agent
  answers (a live snapshot needs no freeze: RAM and disks are saved together).

Reverting a live snapshot while the VM is stopped reverts its disks at once and loads the
RAM when the VM next starts (QEMU starts paused with -S, loads, continues). Reverting a
disk-only snapshot needs the VM stopped: disks changed under a running guest corrupt it.

A snapshot covers the VM's writable volumes, which must be qcow2; a VM with --disk files
(not kasou's) or a raw volume cannot be snapshotted, rather than silently half-covered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from qemu.qmp import QMPClient

from kasou.engine import agent, qmp, qmp_storage
from kasou.engine.runtime import Runtime
from kasou.errors import Conflict, InvalidState, NotFound
from kasou.service import resolve as rs
from kasou.service.revert import Reverter
from kasou.state import VMState, check
from kasou.storage import qemu_img
from kasou.storage.argv import format_node, node
from kasou.storage.core import StorageCore, check_snapshot_name, new_id
from kasou.storage.models import Attachment, PendingRestore, Snapshot, SnapshotKind, Volume
from kasou.storage.views import SnapshotView
from kasou.store.base import VMRecord, now_iso

log = logging.getLogger(__name__)
S = VMState
LIVE = frozenset({S.RUNNING, S.PAUSED})
OFFLINE = frozenset({S.STOPPED, S.CRASHED, S.SUSPENDED})

Covered = list[tuple[Attachment, Volume]]


class Snapshots:
    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self.store = core.store

    def list(self, ref: str, project: str) -> list[SnapshotView]:
        rec = self.core.vm(ref, project)
        return [self._view(rec, s) for s in self.store.snapshots(rec.id)]

    def _view(self, rec: VMRecord, snap: Snapshot) -> SnapshotView:
        names = []
        for vol_id in snap.volumes:
            try:
                names.append(self.store.volume_by_id(vol_id).name)
            except NotFound:
                names.append(f"{vol_id} (deleted)")
        return SnapshotView(name=snap.name, vm=rec.name, kind=snap.kind, volumes=names,
                            vm_state=snap.vm_state, created_at=snap.created_at)

    def covered(self, rec: VMRecord) -> Covered:
        """The VM's writable volumes, all qcow2; refuse a VM with disks outside them."""
        image = rs.image_of(rec.spec, self.core.vms.images_root)
        others = list(rec.spec.disks)
        if image is not None and image.disk and not rec.spec.disks and not rec.spec.template:
            others.append(image.disk)
        if others:
            raise Conflict(f"VM {rec.name!r} has disks that are not kasou volumes "
                           f"({', '.join(others)}); snapshots cover volumes only",
                           field="snapshot")
        pairs = [(a, self.store.volume_by_id(a.volume_id))
                 for a in self.store.attachments(rec.id) if not a.readonly]
        raw = [v.name for _, v in pairs if v.format != "qcow2"]
        if raw:
            raise Conflict(f"volume(s) {', '.join(raw)} of VM {rec.name!r} are raw; snapshots "
                           "live inside qcow2 volumes: convert them first", field="snapshot")
        if not pairs:
            raise Conflict(f"VM {rec.name!r} has no writable volume to snapshot; attach one "
                           "or create the VM with --from/--disk-size", field="snapshot")
        return pairs

    # -- create ------------------------------------------------------------------------------
    async def create(self, ref: str, project: str, name: str,
                     disk_only: bool = False) -> SnapshotView:
        check_snapshot_name(name)
        rec = self.core.vm(ref, project)
        async with self.core.vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            check(rec.name, rec.state, "snapshot")
            pairs = self.covered(rec)
            await self._check_free(rec, name, pairs)
            live = rec.state in LIVE
            kind: SnapshotKind = "live" if live and not disk_only else "disk"
            if live:
                await self._take_live(rec, name, pairs, kind == "live")
            else:
                await _take_offline(name, [v for _, v in pairs])
            snap = Snapshot(id=new_id(), project=project, vm_id=rec.id, name=name, kind=kind,
                            volumes=[v.id for _, v in pairs],
                            vmstate_volume=pairs[0][1].id if kind == "live" else None,
                            vm_state=rec.state.value, created_at=now_iso())
            self.store.add_snapshot(snap)
        return self._view(rec, snap)

    async def _check_free(self, rec: VMRecord, name: str, pairs: Covered) -> None:
        if any(s.name == name for s in self.store.snapshots(rec.id)):
            raise Conflict(f"VM {rec.name!r} already has a snapshot named {name!r}",
                           field="snapshot")
        for _, vol in pairs:
            if name in (await qemu_img.info(vol.path, "qcow2")).snapshot_names():
                raise Conflict(f"volume {vol.name!r} already holds a snapshot named {name!r} "
                               "(not one of this VM's); pick another name", field="snapshot")

    async def _take_live(self, rec: VMRecord, name: str, pairs: Covered, memory: bool) -> None:
        sup = self.core.vms.supervisor(rec)
        nodes = [format_node(a.slot) for a, _ in pairs]
        if memory:
            await qmp_storage.snapshot_save(sup.qmp, name, nodes[0], nodes)
            return
        # blockdev-snapshot-internal-sync wants each disk's root node: the throttle filter,
        # which passes the snapshot down to the qcow2 node.
        roots = [node(a.slot) for a, _ in pairs]
        await _frozen(rec, sup.rt, lambda: qmp_storage.snapshot_disks(sup.qmp, name, roots))

    # -- revert ------------------------------------------------------------------------------
    async def revert(self, ref: str, project: str, name: str) -> SnapshotView:
        rec = self.core.vm(ref, project)
        async with self.core.vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            check(rec.name, rec.state, "revert")
            snap = self.store.snapshot(rec.id, name, rec.name)
            pairs = self._same_disks(rec, snap)
            if rec.state in LIVE:
                if snap.kind == "disk":
                    raise Conflict(f"snapshot {name!r} holds disks only, and VM {rec.name!r} "
                                   f"is {rec.state.value}: changing its disks under the "
                                   "running guest would corrupt them; stop it first",
                                   field="snapshot")
                sup = self.core.vms.supervisor(rec)
                await qmp_storage.snapshot_load(sup.qmp, name, self._vmstate_node(snap, pairs),
                                                [format_node(a.slot) for a, _ in pairs])
            else:
                for _, vol in pairs:
                    await qemu_img.snapshot_apply(vol.path, name)
                self._set_pending(rec, snap)
        return self._view(rec, snap)

    def _same_disks(self, rec: VMRecord, snap: Snapshot) -> Covered:
        pairs = self.covered(rec)
        now = {v.id for _, v in pairs}
        then = set(snap.volumes)
        if now != then:
            names = {v.id: v.name for _, v in pairs}
            added = sorted(names[i] for i in now - then)
            gone = sorted(then - now)
            raise Conflict(f"VM {rec.name!r} no longer has the disks snapshot {snap.name!r} "
                           f"was taken with (added since: {', '.join(added) or 'none'}; "
                           f"detached since: {len(gone)}); restore that set first",
                           field="snapshot")
        return pairs

    @staticmethod
    def _vmstate_node(snap: Snapshot, pairs: Covered) -> str:
        for att, vol in pairs:
            if vol.id == snap.vmstate_volume:
                return format_node(att.slot)
        return format_node(pairs[0][0].slot)

    def _set_pending(self, rec: VMRecord, snap: Snapshot) -> None:
        if snap.kind == "live":
            self.store.set_pending_restore(PendingRestore(
                vm_id=rec.id, project=rec.project, snapshot=snap.name, created_at=now_iso()))
        else:
            self.store.drop_pending_restore(rec.id)

    async def load_pending(self, rec: VMRecord, client: QMPClient) -> None:
        """At a start after a revert while stopped: QEMU waits (-S); load the snapshot's
        RAM and carry on from there (or from a cold boot if it has been deleted)."""
        pending = self.store.pending_restore(rec.id)
        if pending is None:
            return
        try:
            snap = self.store.snapshot(rec.id, pending.snapshot, rec.name)
        except NotFound:
            snap = None
        if snap is not None:
            pairs = self._same_disks(rec, snap)
            await qmp_storage.snapshot_load(client, snap.name, self._vmstate_node(snap, pairs),
                                            [format_node(a.slot) for a, _ in pairs])
        self.store.drop_pending_restore(rec.id)
        if snap is None or snap.vm_state != S.PAUSED.value:
            await qmp.cont(client)

    # -- delete ------------------------------------------------------------------------------
    async def delete(self, ref: str, project: str, name: str) -> None:
        rec = self.core.vm(ref, project)
        async with self.core.vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            if rec.state not in LIVE | OFFLINE:
                raise InvalidState(rec.name, rec.state.value, "delete a snapshot of",
                                   [s.value for s in LIVE | OFFLINE])
            snap = self.store.snapshot(rec.id, name, rec.name)
            slots = {a.volume_id: a.slot for a in self.store.attachments(rec.id)}
            client = self.core.vms.supervisor(rec).qmp if rec.state in LIVE else None
            for vol in _holders(self.core, snap):
                if client is not None and vol.id in slots:
                    await qmp_storage.snapshot_delete(client, name, node(slots[vol.id]))
                else:
                    await qemu_img.snapshot_delete(vol.path, name)
            pending = self.store.pending_restore(rec.id)
            if pending is not None and pending.snapshot == name:
                self.store.drop_pending_restore(rec.id)
            self.store.delete_snapshot(snap.id)

    async def forget_vm(self, rec: VMRecord) -> None:
        """The VM is deleted: drop its snapshot tags from volumes that outlive it."""
        for snap in self.store.snapshots(rec.id):
            for vol in _holders(self.core, snap):
                if vol.owner_vm == rec.id:
                    continue
                try:
                    if snap.name in (await qemu_img.info(vol.path, "qcow2")).snapshot_names():
                        await qemu_img.snapshot_delete(vol.path, snap.name)
                except qemu_img.QemuImgError as e:
                    log.warning("cannot drop snapshot %s from volume %s: %s", snap.name,
                                vol.name, e.message)


def _holders(core: StorageCore, snap: Snapshot) -> list[Volume]:
    out = []
    for vol_id in snap.volumes:
        try:
            out.append(core.store.volume_by_id(vol_id))
        except NotFound:
            continue    # the volume was deleted, and its snapshots with it
    return out


async def _take_offline(name: str, vols: list[Volume]) -> None:
    async with Reverter() as revert:
        for vol in vols:
            await qemu_img.snapshot_create(vol.path, name)
            revert.add(lambda path=vol.path: qemu_img.snapshot_delete(path, name))
        revert.success()


async def _frozen(rec: VMRecord, rt: Runtime,
                  action: Callable[[], Awaitable[None]]) -> None:
    """Run action with the guest's file systems frozen, when a guest agent answers."""
    if not await agent.agent_available(rt):
        log.info("no guest agent in %s: disk-only snapshot without freezing", rec.name)
        await action()
        return
    await agent.fsfreeze(rt)
    try:
        await action()
    finally:
        await agent.fsthaw(rt)
