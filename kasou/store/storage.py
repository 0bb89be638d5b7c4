"""Tables for storage: pools, volumes, attachments (a VM's disks), snapshots, saved states
and pending restores.

Shares the SQLiteStore's connection and lock. UNIQUE constraints settle racing creates
(a taken name is a Conflict naming the field); rows that point at a VM go with it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kasou.errors import Conflict, NotFound
from kasou.storage.models import (
    Attachment,
    Limits,
    PendingRestore,
    Pool,
    SavedState,
    Snapshot,
    Volume,
)
from kasou.store.base import current_batch
from kasou.store.sqlite import SQLiteStore, rows_of_vm

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', name TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE, owned_dir INTEGER NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (project, name));
CREATE TABLE IF NOT EXISTS volumes (
    id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', name TEXT NOT NULL,
    pool_id TEXT NOT NULL, path TEXT NOT NULL UNIQUE, format TEXT NOT NULL,
    size INTEGER NOT NULL, template INTEGER NOT NULL DEFAULT 0, backing_id TEXT,
    owner_vm TEXT, state TEXT NOT NULL, source TEXT NOT NULL, created_at TEXT NOT NULL,
    UNIQUE (project, name));
CREATE TABLE IF NOT EXISTS attachments (
    vm_id TEXT NOT NULL, volume_id TEXT NOT NULL, project TEXT NOT NULL DEFAULT 'default',
    slot INTEGER NOT NULL, readonly INTEGER NOT NULL, boot INTEGER NOT NULL,
    limits TEXT NOT NULL, attached_at TEXT NOT NULL,
    PRIMARY KEY (vm_id, volume_id), UNIQUE (vm_id, slot));
CREATE TABLE IF NOT EXISTS vm_snapshots (
    id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', vm_id TEXT NOT NULL,
    name TEXT NOT NULL, kind TEXT NOT NULL, volumes TEXT NOT NULL, vmstate_volume TEXT,
    vm_state TEXT NOT NULL, created_at TEXT NOT NULL, UNIQUE (vm_id, name));
CREATE TABLE IF NOT EXISTS saved_states (
    vm_id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default', path TEXT NOT NULL,
    size INTEGER NOT NULL, was_running INTEGER NOT NULL, saved_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending_restores (
    vm_id TEXT PRIMARY KEY, project TEXT NOT NULL DEFAULT 'default',
    snapshot TEXT NOT NULL, created_at TEXT NOT NULL);
"""


QuotaGate = Callable[[str, dict[str, int]], None]


class StorageStore:
    def __init__(self, store: SQLiteStore) -> None:
        self._db = store._db
        self._lock = store._lock
        # Set by the platform to the project quota check; called under the store lock right
        # before a write that adds bytes or snapshots, so check and write are one step.
        self.quota_gate: QuotaGate | None = None
        with self._lock:
            self._db.executescript(_SCHEMA)

    def _charge(self, project: str, add: dict[str, int]) -> None:
        if self.quota_gate is not None and any(v > 0 for v in add.values()):
            self.quota_gate(project, add)

    def usage(self, project: str) -> dict[str, int]:
        """What this project's storage counts against its quota."""
        with self._lock:
            size = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM volumes "
                                    "WHERE project = ?", (project,)).fetchone()[0]
            snaps = self._db.execute("SELECT COUNT(*) FROM vm_snapshots WHERE project = ?",
                                     (project,)).fetchone()[0]
        return {"disk_bytes": int(size), "snapshots": int(snaps)}

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several writes that stand or fall together."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _write(self, sql: str, args: tuple[Any, ...], taken: str | None = None,
               field: str = "name") -> None:
        try:
            with self._lock:
                self._db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise Conflict(taken or "already exists", field=field) from None

    # -- pools ---------------------------------------------------------------------------
    def add_pool(self, pool: Pool) -> None:
        self._write("INSERT INTO pools VALUES (?, ?, ?, ?, ?, ?)",
                    (pool.id, pool.project, pool.name, pool.path, int(pool.owned_dir),
                     pool.created_at),
                    f"a pool named {pool.name!r} or at {pool.path} already exists")

    def pools(self) -> list[Pool]:
        return [_pool(r) for r in self._all("SELECT * FROM pools ORDER BY name")]

    def pool(self, name: str) -> Pool:
        row = self._one("SELECT * FROM pools WHERE name = ?", (name,))
        if row is None:
            names = ", ".join(p.name for p in self.pools()) or "none"
            raise NotFound(f"no pool named {name!r} (pools: {names})", field="pool")
        return _pool(row)

    def pool_by_id(self, pool_id: str) -> Pool:
        row = self._one("SELECT * FROM pools WHERE id = ?", (pool_id,))
        if row is None:
            raise NotFound(f"no pool with id {pool_id!r}", field="pool")
        return _pool(row)

    def delete_pool(self, pool_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pools WHERE id = ?", (pool_id,))

    # -- volumes -------------------------------------------------------------------------
    def add_volume(self, vol: Volume) -> None:
        with self._lock:
            self._charge(vol.project, {"disk_bytes": vol.size})
            self._add_volume(vol)

    def _add_volume(self, vol: Volume) -> None:
        self._write("INSERT INTO volumes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (vol.id, vol.project, vol.name, vol.pool_id, vol.path, vol.format,
                     vol.size, int(vol.template), vol.backing_id, vol.owner_vm, vol.state,
                     vol.source, vol.created_at),
                    f"a volume named {vol.name!r} already exists in project {vol.project!r}")

    def update_volume(self, vol: Volume) -> None:
        with self._lock:
            old = self._db.execute("SELECT size FROM volumes WHERE id = ?",
                                   (vol.id,)).fetchone()
            if old is not None:
                self._charge(vol.project, {"disk_bytes": vol.size - int(old["size"])})
            self._db.execute(
                "UPDATE volumes SET format = ?, size = ?, template = ?, state = ?, path = ?, "
                "owner_vm = ? WHERE id = ?",
                (vol.format, vol.size, int(vol.template), vol.state, vol.path, vol.owner_vm,
                 vol.id))

    def volume(self, name: str, project: str) -> Volume:
        row = self._one("SELECT * FROM volumes WHERE project = ? AND name = ?", (project, name))
        if row is None:
            raise NotFound(f"no volume named {name!r} in project {project!r}", field="volume")
        return _volume(row)

    def volume_by_id(self, vol_id: str) -> Volume:
        batch = current_batch()
        if batch is not None:   # a VM list: the volumes of all its VMs in one query
            vol = batch.memo("attached_volumes", lambda: self._attached_volumes(batch.project))
            if vol_id in vol:
                return vol[vol_id]
        row = self._one("SELECT * FROM volumes WHERE id = ?", (vol_id,))
        if row is None:
            raise NotFound(f"no volume with id {vol_id!r}", field="volume")
        return _volume(row)

    def _attached_volumes(self, project: str | None) -> dict[str, Volume]:
        """The volumes attached to the VMs of a project (of any, for None), by id."""
        sql = "SELECT volume_id FROM attachments"
        args: tuple[str, ...] = ()
        if project is not None:
            sql += " WHERE vm_id IN (SELECT id FROM vms WHERE project = ?)"
            args = (project,)
        rows = self._all(f"SELECT * FROM volumes WHERE id IN ({sql})", args)
        return {r["id"]: _volume(r) for r in rows}

    def volumes(self, project: str | None = None) -> list[Volume]:
        if project is None:
            rows = self._all("SELECT * FROM volumes ORDER BY project, name")
        else:
            rows = self._all("SELECT * FROM volumes WHERE project = ? ORDER BY name",
                             (project,))
        return [_volume(r) for r in rows]

    def volumes_in_pool(self, pool_id: str) -> list[Volume]:
        return [_volume(r) for r in self._all(
            "SELECT * FROM volumes WHERE pool_id = ? ORDER BY name", (pool_id,))]

    def dependants(self, vol_id: str) -> list[Volume]:
        return [_volume(r) for r in self._all(
            "SELECT * FROM volumes WHERE backing_id = ? ORDER BY name", (vol_id,))]

    def owned_by(self, vm_id: str) -> list[Volume]:
        return [_volume(r) for r in self._all(
            "SELECT * FROM volumes WHERE owner_vm = ? ORDER BY name", (vm_id,))]

    def unfinished_volumes(self) -> list[Volume]:
        return [_volume(r) for r in self._all("SELECT * FROM volumes WHERE state != 'ready'")]

    def delete_volume(self, vol_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM volumes WHERE id = ?", (vol_id,))

    # -- attachments ---------------------------------------------------------------------
    def attach(self, att: Attachment) -> None:
        self._write("INSERT INTO attachments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (att.vm_id, att.volume_id, att.project, att.slot, int(att.readonly),
                     int(att.boot), att.limits.model_dump_json(), att.attached_at),
                    "the volume is already attached to this VM", field="volume")

    def attachments(self, vm_id: str) -> list[Attachment]:
        return [_attachment(r) for r in rows_of_vm(
            self._db, self._lock, vm_id, "SELECT * FROM attachments", "slot")]

    def attachments_of_volume(self, vol_id: str) -> list[Attachment]:
        return [_attachment(r) for r in self._all(
            "SELECT * FROM attachments WHERE volume_id = ? ORDER BY vm_id", (vol_id,))]

    def set_limits(self, vm_id: str, vol_id: str, limits: Limits) -> None:
        with self._lock:
            self._db.execute("UPDATE attachments SET limits = ? WHERE vm_id = ? AND "
                             "volume_id = ?", (limits.model_dump_json(), vm_id, vol_id))

    def detach(self, vm_id: str, vol_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM attachments WHERE vm_id = ? AND volume_id = ?",
                             (vm_id, vol_id))

    # -- snapshots -----------------------------------------------------------------------
    def add_snapshot(self, snap: Snapshot) -> None:
        with self._lock:
            self._charge(snap.project, {"snapshots": 1})
            self._add_snapshot(snap)

    def _add_snapshot(self, snap: Snapshot) -> None:
        self._write("INSERT INTO vm_snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (snap.id, snap.project, snap.vm_id, snap.name, snap.kind,
                     json.dumps(snap.volumes), snap.vmstate_volume, snap.vm_state,
                     snap.created_at),
                    f"the VM already has a snapshot named {snap.name!r}", field="snapshot")

    def snapshots(self, vm_id: str) -> list[Snapshot]:
        return [_snapshot(r) for r in rows_of_vm(
            self._db, self._lock, vm_id, "SELECT * FROM vm_snapshots", "created_at")]

    def snapshot(self, vm_id: str, name: str, vm_name: str) -> Snapshot:
        row = self._one("SELECT * FROM vm_snapshots WHERE vm_id = ? AND name = ?",
                        (vm_id, name))
        if row is None:
            have = ", ".join(s.name for s in self.snapshots(vm_id)) or "none"
            raise NotFound(f"VM {vm_name!r} has no snapshot named {name!r} (snapshots: "
                           f"{have})", field="snapshot")
        return _snapshot(row)

    def delete_snapshot(self, snap_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM vm_snapshots WHERE id = ?", (snap_id,))

    # -- saved states and pending restores -----------------------------------------------
    def save_state(self, st: SavedState) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO saved_states VALUES (?, ?, ?, ?, ?, ?)",
                             (st.vm_id, st.project, st.path, st.size, int(st.was_running),
                              st.saved_at))

    def saved_state(self, vm_id: str) -> SavedState | None:
        rows = rows_of_vm(self._db, self._lock, vm_id, "SELECT * FROM saved_states", "vm_id")
        if not rows:
            return None
        row = rows[0]
        return SavedState(vm_id=row["vm_id"], project=row["project"], path=row["path"],
                          size=row["size"], was_running=bool(row["was_running"]),
                          saved_at=row["saved_at"])

    def drop_saved_state(self, vm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM saved_states WHERE vm_id = ?", (vm_id,))

    def set_pending_restore(self, pr: PendingRestore) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pending_restores VALUES (?, ?, ?, ?)",
                             (pr.vm_id, pr.project, pr.snapshot, pr.created_at))

    def pending_restore(self, vm_id: str) -> PendingRestore | None:
        rows = rows_of_vm(self._db, self._lock, vm_id, "SELECT * FROM pending_restores",
                          "vm_id")
        if not rows:
            return None
        row = rows[0]
        return PendingRestore(vm_id=row["vm_id"], project=row["project"],
                              snapshot=row["snapshot"], created_at=row["created_at"])

    def drop_pending_restore(self, vm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending_restores WHERE vm_id = ?", (vm_id,))

    def forget_vm(self, vm_id: str) -> None:
        """Every row that only makes sense with the VM (its volumes are handled first)."""
        with self.transaction():
            for table in ("attachments", "vm_snapshots", "saved_states", "pending_restores"):
                self._db.execute(f"DELETE FROM {table} WHERE vm_id = ?", (vm_id,))


def _pool(r: sqlite3.Row) -> Pool:
    return Pool(id=r["id"], project=r["project"], name=r["name"], path=r["path"],
                owned_dir=bool(r["owned_dir"]), created_at=r["created_at"])


def _volume(r: sqlite3.Row) -> Volume:
    return Volume(id=r["id"], project=r["project"], name=r["name"], pool_id=r["pool_id"],
                  path=r["path"], format=r["format"], size=r["size"],
                  template=bool(r["template"]), backing_id=r["backing_id"],
                  owner_vm=r["owner_vm"], state=r["state"], source=r["source"],
                  created_at=r["created_at"])


def _attachment(r: sqlite3.Row) -> Attachment:
    return Attachment(vm_id=r["vm_id"], volume_id=r["volume_id"], project=r["project"],
                      slot=r["slot"], readonly=bool(r["readonly"]), boot=bool(r["boot"]),
                      limits=Limits.model_validate_json(r["limits"]),
                      attached_at=r["attached_at"])


def _snapshot(r: sqlite3.Row) -> Snapshot:
    return Snapshot(id=r["id"], project=r["project"], vm_id=r["vm_id"], name=r["name"],
                    kind=r["kind"], volumes=json.loads(r["volumes"]),
                    vmstate_volume=r["vmstate_volume"], vm_state=r["vm_state"],
                    created_at=r["created_at"])
