"""Pools: directories that hold volumes. `default` lives under the data dir; more pools
are added by path (e.g. a bigger file system). Volumes go in <pool>/<project>/.

kasou owns only what it made in a pool: deleting a pool is refused while it holds
volumes, and removes the directory only when kasou created it and it is empty.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from kasou.errors import Conflict, InvalidSpec
from kasou.paths import check_name
from kasou.storage.core import DEFAULT_POOL, StorageCore, allocated, new_id
from kasou.storage.models import Pool
from kasou.storage.views import PoolView
from kasou.store.base import DEFAULT_PROJECT, now_iso


class Pools:
    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self.store = core.store

    def ensure_default(self) -> Pool:
        path = self.core.default_pool_dir
        path.mkdir(parents=True, exist_ok=True, mode=0o711)
        for pool in self.store.pools():
            if pool.name == DEFAULT_POOL:
                return pool
        pool = Pool(id=new_id(), project=DEFAULT_PROJECT, name=DEFAULT_POOL, path=str(path),
                    owned_dir=True, created_at=now_iso())
        self.store.add_pool(pool)
        return pool

    def list(self) -> list[PoolView]:
        return [self.view(p) for p in self.store.pools()]

    def show(self, name: str) -> PoolView:
        return self.view(self.store.pool(name))

    def create(self, name: str, path: str) -> PoolView:
        check_name(name, "name")
        target = self._check_path(path)
        owned = not target.exists()
        if owned:
            if not target.parent.is_dir():
                raise InvalidSpec(f"path: {target.parent} does not exist", field="path")
            target.mkdir(mode=0o711)
        pool = Pool(id=new_id(), project=DEFAULT_PROJECT, name=name, path=str(target),
                    owned_dir=owned, created_at=now_iso())
        try:
            self.store.add_pool(pool)
        except Conflict:
            if owned:
                target.rmdir()
            raise
        return self.view(pool)

    def _check_path(self, path: str) -> Path:
        if not path.startswith("/"):
            raise InvalidSpec("path: must be an absolute path on the host", field="path")
        target = Path(path).resolve()
        if target == Path("/"):
            raise InvalidSpec("path: / cannot be a pool", field="path")
        if target.exists() and not target.is_dir():
            raise InvalidSpec(f"path: {target} is not a directory", field="path")
        for pool in self.store.pools():
            other = Path(pool.path)
            if target == other or target.is_relative_to(other) or other.is_relative_to(target):
                raise Conflict(f"path: {target} overlaps pool {pool.name!r} ({other})",
                               field="path")
        return target

    def delete(self, name: str) -> None:
        pool = self.store.pool(name)
        if pool.name == DEFAULT_POOL:
            raise Conflict("the default pool cannot be deleted", field="name")
        held = self.store.volumes_in_pool(pool.id)
        if held:
            names = ", ".join(f"{v.project}/{v.name}" for v in held[:5])
            raise Conflict(f"pool {name!r} still holds {len(held)} volume(s): {names}",
                           field="name")
        self.store.delete_pool(pool.id)
        self._tidy(Path(pool.path), pool.owned_dir)

    @staticmethod
    def _tidy(path: Path, owned: bool) -> None:
        # In a directory the user gave, even empty sub-directories may be theirs.
        if not owned:
            return
        with contextlib.suppress(OSError):
            for sub in path.iterdir():
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            path.rmdir()

    def view(self, pool: Pool) -> PoolView:
        vols = self.store.volumes_in_pool(pool.id)
        try:
            st = os.statvfs(pool.path)
            capacity, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        except OSError:
            capacity = free = 0
        return PoolView(name=pool.name, path=pool.path, volumes=len(vols),
                        allocated=sum(allocated(v.path) for v in vols), capacity=capacity,
                        free=free, created_at=pool.created_at)
