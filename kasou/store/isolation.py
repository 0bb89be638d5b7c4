"""Table for per-VM limits set with `kasou vm set` (they survive daemon restarts and VM
restarts). Limits given at create time live in the VM's spec; a row here, once written,
is the whole of the VM's limits.

Shares the SQLiteStore's connection and lock.
"""

from __future__ import annotations

from kasou.isolation.limits import Limits
from kasou.store.base import DEFAULT_PROJECT, now_iso
from kasou.store.sqlite import SQLiteStore, rows_of_vm

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vm_limits (
    vm_id      TEXT PRIMARY KEY,
    project    TEXT NOT NULL DEFAULT 'default',
    limits     TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""


class LimitsStore:
    def __init__(self, store: SQLiteStore) -> None:
        self._db = store._db
        self._lock = store._lock
        with self._lock:
            self._db.executescript(_SCHEMA)

    def get(self, vm_id: str) -> Limits | None:
        rows = rows_of_vm(self._db, self._lock, vm_id, "SELECT vm_id, limits FROM vm_limits",
                          "vm_id")
        return Limits.model_validate_json(rows[0]["limits"]) if rows else None

    def put(self, vm_id: str, limits: Limits, project: str = DEFAULT_PROJECT) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO vm_limits (vm_id, project, limits, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (vm_id) DO UPDATE SET limits = excluded.limits, "
                "updated_at = excluded.updated_at",
                (vm_id, project, limits.model_dump_json(), now_iso()))

    def delete(self, vm_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM vm_limits WHERE vm_id = ?", (vm_id,))
