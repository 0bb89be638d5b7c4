"""What every storage operation shares: the store, the VM service, locks, paths, views.

Locking: an operation on a VM holds that VM's one lock (VMService.lock); an operation on
a volume holds the volume's lock. An operation on both takes the VM's first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import defaultdict
from pathlib import Path

from kasou.errors import Conflict, InvalidSpec, NotFound
from kasou.paths import Layout, check_name
from kasou.service.vms import VMService
from kasou.storage.models import Format, Pool, Progress, Volume
from kasou.storage.views import VolumeView
from kasou.store.base import VMRecord
from kasou.store.storage import StorageStore

DEFAULT_POOL = "default"


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def serial(vol: Volume) -> str:
    """virtio-blk serials hold 20 bytes; 'kasou-' + the 12-hex id fits."""
    return f"kasou-{vol.id}"


def allocated(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def check_snapshot_name(name: str) -> str:
    check_name(name, "snapshot")
    # qemu-img and loadvm match a tag against snapshot ids too; ids are numbers.
    if name.isdigit():
        raise InvalidSpec(f"snapshot {name!r} is not allowed: a name must not be all digits",
                          field="snapshot")
    return name


class StorageCore:
    def __init__(self, layout: Layout, store: StorageStore) -> None:
        self.layout = layout
        self.store = store
        self.progress: dict[str, Progress] = {}
        self._vol_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._vms: VMService | None = None

    @property
    def vms(self) -> VMService:
        # The VM service is made after the hooks it calls (storage's among them), so it
        # is bound here once it exists.
        assert self._vms is not None, "storage is not bound to the VM service yet"
        return self._vms

    def bind(self, vms: VMService) -> None:
        self._vms = vms

    @property
    def default_pool_dir(self) -> Path:
        return self.layout.root / "pools" / DEFAULT_POOL

    def vol_lock(self, vol_id: str) -> asyncio.Lock:
        return self._vol_locks[vol_id]

    def forget_lock(self, vol_id: str) -> None:
        self._vol_locks.pop(vol_id, None)

    def vm(self, ref: str, project: str) -> VMRecord:
        return self.vms.store.get_vm(ref, project)

    def vm_name(self, vm_id: str) -> str:
        try:
            return self.vms.store.get_vm_by_id(vm_id).name
        except NotFound:
            return vm_id

    def pool_of(self, name: str | None) -> Pool:
        return self.store.pool(name or DEFAULT_POOL)

    @staticmethod
    def project_dir(pool: Pool, project: str) -> Path:
        check_name(project, "project")
        directory = Path(pool.path) / project
        directory.mkdir(mode=0o750, exist_ok=True)
        return directory

    def new_path(self, pool: Pool, project: str, name: str, fmt: Format) -> Path:
        """<pool>/<project>/<name>.<fmt>; refused if a file is already there, since
        kasou never overwrites a file it does not know it owns."""
        check_name(name, "name")
        path = self.project_dir(pool, project) / f"{name}.{fmt}"
        if path.exists():
            raise Conflict(f"{path} already exists and is not a volume kasou knows; move it "
                           "away or pick another name", field="name")
        return path

    def usable(self, name: str, project: str) -> Volume:
        """A volume that is ready (not being imported or made)."""
        vol = self.store.volume(name, project)
        if vol.state != "ready":
            raise Conflict(f"volume {name!r} is still {vol.state}", field="volume")
        return vol

    def view(self, vol: Volume) -> VolumeView:
        backing = None
        if vol.backing_id:
            with contextlib.suppress(NotFound):
                backing = self.store.volume_by_id(vol.backing_id).name
        return VolumeView(
            name=vol.name, project=vol.project, pool=self._pool_name(vol.pool_id),
            path=vol.path, format=vol.format, size=vol.size, allocated=allocated(vol.path),
            template=vol.template, backing=backing,
            dependants=[d.name for d in self.store.dependants(vol.id)],
            owner_vm=self.vm_name(vol.owner_vm) if vol.owner_vm else None,
            attached_to=[self.vm_name(a.vm_id)
                         for a in self.store.attachments_of_volume(vol.id)],
            state=vol.state, progress=self.progress.get(vol.id), source=vol.source,
            created_at=vol.created_at)

    def _pool_name(self, pool_id: str) -> str:
        try:
            return self.store.pool_by_id(pool_id).name
        except NotFound:
            return pool_id
