"""Tables for desktop pools: the pools, and their desktops with who holds each.

Shares the SQLiteStore's connection and lock. UNIQUE constraints settle races: one pool
name per project, one desktop per index, one desktop per user in a pool.
"""

from __future__ import annotations

from pydantic import BaseModel

from kasou.errors import Conflict, NotFound
from kasou.store.base import batch_memo
from kasou.store.sqlite import rows_of_vm
from kasou.store.tables import Tables

_SCHEMA = """
CREATE TABLE IF NOT EXISTS desktop_pools (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
    created_at TEXT NOT NULL, UNIQUE (project, name));
CREATE TABLE IF NOT EXISTS desktops (
    pool_id TEXT NOT NULL REFERENCES desktop_pools(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, vm_id TEXT NOT NULL, user TEXT, assigned_at TEXT,
    PRIMARY KEY (pool_id, idx), UNIQUE (vm_id), UNIQUE (pool_id, user));
"""


class PoolRow(BaseModel):
    id: str
    project: str
    name: str
    spec: str             # PoolSpec as JSON; size is the wanted number of desktops
    created_at: str


class DesktopRow(BaseModel):
    pool_id: str
    idx: int
    vm_id: str
    user: str | None = None
    assigned_at: str | None = None


class DesktopStore(Tables):
    SCHEMA = _SCHEMA

    # -- pools ----------------------------------------------------------------------------
    def add_pool(self, row: PoolRow) -> None:
        self._exec("INSERT INTO desktop_pools VALUES (?, ?, ?, ?, ?)",
                   (row.id, row.project, row.name, row.spec, row.created_at),
                   f"a desktop pool named {row.name!r} already exists in project "
                   f"{row.project!r}", "name")

    def pools(self, project: str | None = None) -> list[PoolRow]:
        return list(batch_memo(("desktop_pools", project), lambda: self._pools(project)))

    def _pools(self, project: str | None) -> list[PoolRow]:
        if project is None:
            rows = self._all("SELECT * FROM desktop_pools ORDER BY project, name")
        else:
            rows = self._all("SELECT * FROM desktop_pools WHERE project = ? ORDER BY name",
                             (project,))
        return [PoolRow(**dict(r)) for r in rows]

    def pool(self, name: str, project: str) -> PoolRow:
        rows = self._all("SELECT * FROM desktop_pools WHERE project = ? AND name = ?",
                         (project, name))
        if not rows:
            raise NotFound(f"no desktop pool named {name!r} in project {project!r}")
        return PoolRow(**dict(rows[0]))

    def set_spec(self, pool_id: str, spec: str) -> None:
        with self._lock:
            self._db.execute("UPDATE desktop_pools SET spec = ? WHERE id = ?", (spec, pool_id))

    def delete_pool(self, pool_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM desktops WHERE pool_id = ?", (pool_id,))
            self._db.execute("DELETE FROM desktop_pools WHERE id = ?", (pool_id,))

    # -- desktops -------------------------------------------------------------------------
    def add_desktop(self, row: DesktopRow) -> None:
        self._exec("INSERT INTO desktops VALUES (?, ?, ?, ?, ?)",
                   (row.pool_id, row.idx, row.vm_id, row.user, row.assigned_at),
                   f"desktop {row.idx} of the pool already exists", "size")

    def desktops(self, pool_id: str | None = None) -> list[DesktopRow]:
        if pool_id is None:
            rows = self._all("SELECT * FROM desktops ORDER BY pool_id, idx")
        else:
            rows = self._all("SELECT * FROM desktops WHERE pool_id = ? ORDER BY idx",
                             (pool_id,))
        return [DesktopRow(**dict(r)) for r in rows]

    def desktop_of_vm(self, vm_id: str) -> DesktopRow | None:
        rows = rows_of_vm(self._db, self._lock, vm_id, "SELECT * FROM desktops", "vm_id")
        return DesktopRow(**dict(rows[0])) if rows else None

    def of_user(self, user: str) -> list[tuple[PoolRow, DesktopRow]]:
        rows = self._all("SELECT p.id AS p_id, p.project, p.name, p.spec, p.created_at, d.* "
                         "FROM desktops d JOIN desktop_pools p ON p.id = d.pool_id "
                         "WHERE d.user = ? ORDER BY p.project, p.name", (user,))
        return [(PoolRow(id=r["p_id"], project=r["project"], name=r["name"], spec=r["spec"],
                         created_at=r["created_at"]),
                 DesktopRow(pool_id=r["pool_id"], idx=r["idx"], vm_id=r["vm_id"],
                            user=r["user"], assigned_at=r["assigned_at"])) for r in rows]

    def assign(self, pool_id: str, idx: int, user: str, at: str) -> None:
        """Atomic: only a free desktop is taken, and a user holds one desktop per pool."""
        cur = self._exec("UPDATE desktops SET user = ?, assigned_at = ? "
                         "WHERE pool_id = ? AND idx = ? AND user IS NULL", (user, at, pool_id, idx),
                         f"user {user!r} already has a desktop in this pool", "user")
        if cur.rowcount != 1:
            raise Conflict(f"desktop {idx} was taken meanwhile; try again", field="user")

    def release(self, pool_id: str, idx: int, vm_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE desktops SET user = NULL, assigned_at = NULL, vm_id = ? "
                             "WHERE pool_id = ? AND idx = ?", (vm_id, pool_id, idx))

    def remove_desktop(self, pool_id: str, idx: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM desktops WHERE pool_id = ? AND idx = ?",
                             (pool_id, idx))
