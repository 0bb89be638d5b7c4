"""SQLite store (WAL): the embedded default, one file under the data dir."""

from __future__ import annotations

import sqlite3
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from kasou.errors import Conflict, InvalidState, NotFound
from kasou.spec import VMSpec
from kasou.state import VMState
from kasou.store.base import DEFAULT_PROJECT, VMRecord, current_batch, now_iso

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    id          TEXT PRIMARY KEY,
    project     TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (project, name)
);
"""


def rows_of_vm(db: sqlite3.Connection, lock: Any, vm_id: str, select: str,
               order: str, vm_col: str = "vm_id") -> list[sqlite3.Row]:
    """`select` (a SELECT ... FROM ... without WHERE, whose rows carry a `vm_id` column)
    for one VM's rows, in `order`. Inside a ReadBatch covering the VM: one query for all
    the batch's VMs, made on first use and grouped by VM, instead of one per VM."""
    batch = current_batch(vm_id)
    if batch is None:
        with lock:
            return list(db.execute(f"{select} WHERE {vm_col} = ? ORDER BY {order}",
                                   (vm_id,)).fetchall())

    def load() -> dict[str, list[sqlite3.Row]]:
        sql = select
        args: tuple[str, ...] = ()
        if batch.project is not None:
            sql += f" WHERE {vm_col} IN (SELECT id FROM vms WHERE project = ?)"
            args = (batch.project,)
        with lock:
            rows = db.execute(f"{sql} ORDER BY {order}", args).fetchall()
        grouped: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for row in rows:
            grouped[row["vm_id"]].append(row)
        return grouped

    return list(batch.memo(("rows_of_vm", select, order), load).get(vm_id, ()))


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Parsed specs by VM id, with the JSON they came from: a spec only changes with a
        # new JSON text, and VMSpec is frozen, so records can share the parsed one.
        self._specs: dict[str, tuple[str, VMSpec]] = {}
        # One connection shared by the daemon's threads; sqlite serialises, the lock keeps
        # multi-statement operations atomic.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=10)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def _row(self, row: sqlite3.Row) -> VMRecord:
        return VMRecord(
            id=row["id"], name=row["name"], project=row["project"],
            spec=self._spec(row["id"], row["spec"]), state=VMState(row["state"]),
            reason=row["reason"], created_at=row["created_at"], updated_at=row["updated_at"],
        )

    def _spec(self, vm_id: str, text: str) -> VMSpec:
        cached = self._specs.get(vm_id)
        if cached is not None and cached[0] == text:
            return cached[1]
        spec = VMSpec.model_validate_json(text)
        self._specs[vm_id] = (text, spec)
        return spec

    def create_vm(self, rec: VMRecord) -> None:
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO vms (id, project, name, spec, state, reason, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (rec.id, rec.project, rec.name, rec.spec.model_dump_json(), rec.state.value,
                     rec.reason, rec.created_at, rec.updated_at),
                )
        except sqlite3.IntegrityError:
            raise Conflict(f"a VM named {rec.name!r} already exists in project "
                           f"{rec.project!r}", field="name") from None

    def get_vm(self, ref: str, project: str = DEFAULT_PROJECT) -> VMRecord:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM vms WHERE project = ? AND (name = ? OR id = ?) "
                "ORDER BY name = ? DESC LIMIT 1", (project, ref, ref, ref),
            ).fetchone()
        if row is None:
            raise NotFound(f"no VM named {ref!r} in project {project!r}")
        return self._row(row)

    def get_vm_by_id(self, vm_id: str) -> VMRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM vms WHERE id = ?", (vm_id,)).fetchone()
        if row is None:
            raise NotFound(f"no VM with id {vm_id!r}")
        return self._row(row)

    def list_vms(self, project: str | None = None) -> list[VMRecord]:
        with self._lock:
            if project is None:
                rows = self._db.execute("SELECT * FROM vms ORDER BY project, name").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM vms WHERE project = ? ORDER BY name",
                                        (project,)).fetchall()
        return [self._row(r) for r in rows]

    def set_state(self, vm_id: str, state: VMState, reason: str | None = None,
                  expect: frozenset[VMState] | None = None) -> VMRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM vms WHERE id = ?", (vm_id,)).fetchone()
            if row is None:
                raise NotFound(f"no VM with id {vm_id!r}")
            current = VMState(row["state"])
            if expect is not None and current not in expect:
                raise InvalidState(row["name"], current.value, f"move to {state.value}",
                                   [s.value for s in expect])
            self._db.execute("UPDATE vms SET state = ?, reason = ?, updated_at = ? WHERE id = ?",
                             (state.value, reason, now_iso(), vm_id))
            row = self._db.execute("SELECT * FROM vms WHERE id = ?", (vm_id,)).fetchone()
        return self._row(row)

    def delete_vm(self, vm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
        self._specs.pop(vm_id, None)
