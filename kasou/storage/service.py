"""The storage command set: pools, volumes, imports, a VM's disks, snapshots, suspend.
The API, CLI and web UI only call these; `hook` is storage's part of every VM's life."""

from __future__ import annotations

from kasou.paths import Layout
from kasou.service.vms import VMService
from kasou.storage.core import StorageCore
from kasou.storage.disks import Disks
from kasou.storage.hook import StorageHook
from kasou.storage.imports import Importer
from kasou.storage.pools import Pools
from kasou.storage.snapshots import Snapshots
from kasou.storage.suspend import Suspender
from kasou.storage.volumes import Volumes
from kasou.store.sqlite import SQLiteStore
from kasou.store.storage import StorageStore


class StorageService:
    def __init__(self, layout: Layout, store: SQLiteStore) -> None:
        self.core = StorageCore(layout, StorageStore(store))
        self.pools = Pools(self.core)
        self.volumes = Volumes(self.core)
        self.importer = Importer(self.core)
        self.disks = Disks(self.core)
        self.snapshots = Snapshots(self.core)
        self.suspender = Suspender(self.core)
        self.hook = StorageHook(self.core, self.snapshots, self.suspender)

    def bind(self, vms: VMService) -> None:
        """Once the VM service exists (it is made with this service's hook)."""
        self.core.bind(vms)
        self.pools.ensure_default()
        self.importer.clean_unfinished()
