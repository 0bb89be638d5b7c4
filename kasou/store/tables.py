"""The base of each area's tables: they share the SQLiteStore's connection and lock, make
their schema on first use, and turn a broken UNIQUE constraint into a Conflict."""

from __future__ import annotations

import sqlite3
from typing import Any

from kasou.errors import Conflict
from kasou.store.sqlite import SQLiteStore


class Tables:
    SCHEMA = ""

    def __init__(self, store: SQLiteStore) -> None:
        self._db = store._db
        self._lock = store._lock
        with self._lock:
            self._db.executescript(self.SCHEMA)

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            rows: list[sqlite3.Row] = self._db.execute(sql, args).fetchall()
            return rows

    def _one(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def _exec(self, sql: str, args: tuple[Any, ...], conflict: str,
              field: str | None = None) -> sqlite3.Cursor:
        """Run one write; a broken UNIQUE/foreign key becomes Conflict(conflict)."""
        try:
            with self._lock:
                return self._db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise Conflict(conflict, field=field) from None
