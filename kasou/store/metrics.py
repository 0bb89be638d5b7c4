"""Table for metrics: compressed chunks of samples (kasou/metrics/series.py), one row per
series, resolution tier and chunk. A series is a VM id, or '@host' for the host totals.

Shares the SQLiteStore's connection and lock. The open (newest) chunk of each series is
rewritten in place as it grows, so a crash loses at most one flush interval.
"""

from __future__ import annotations

from kasou.metrics.series import Sample, decode
from kasou.store.base import DEFAULT_PROJECT
from kasou.store.sqlite import SQLiteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS metric_chunks (
    series   TEXT NOT NULL,
    project  TEXT NOT NULL DEFAULT 'default',
    tier     INTEGER NOT NULL,          -- resolution in ms; 0: every sample as taken
    start_ms INTEGER NOT NULL,
    end_ms   INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    data     BLOB NOT NULL,
    PRIMARY KEY (series, tier, start_ms)
);
CREATE INDEX IF NOT EXISTS metric_chunks_end ON metric_chunks (tier, end_ms);
"""


class MetricsStore:
    def __init__(self, store: SQLiteStore) -> None:
        self._db = store._db
        self._lock = store._lock
        with self._lock:
            self._db.executescript(_SCHEMA)

    def put_chunk(self, series: str, tier: int, start_ms: int, end_ms: int, n: int,
                  data: bytes, project: str = DEFAULT_PROJECT) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO metric_chunks (series, project, tier, start_ms, end_ms, n, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series, tier, start_ms) DO UPDATE "
                "SET end_ms = excluded.end_ms, n = excluded.n, data = excluded.data",
                (series, project, tier, start_ms, end_ms, n, data))

    def put_many(self, rows: list[tuple[str, str, int, int, int, int, bytes]]) -> None:
        """(series, project, tier, start_ms, end_ms, n, data) rows in one transaction."""
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO metric_chunks (series, project, tier, start_ms, end_ms, n, "
                    "data) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (series, tier, start_ms) "
                    "DO UPDATE SET end_ms = excluded.end_ms, n = excluded.n, "
                    "data = excluded.data", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def samples(self, series: str, tier: int, from_ms: int, to_ms: int) -> list[Sample]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM metric_chunks WHERE series = ? AND tier = ? AND end_ms >= ? "
                "AND start_ms <= ? ORDER BY start_ms", (series, tier, from_ms, to_ms)).fetchall()
        out: list[Sample] = []
        for row in rows:
            out += [s for s in decode(row["data"]) if from_ms <= s[0] <= to_ms]
        return out

    def prune(self, tier: int, before_ms: int) -> int:
        with self._lock:
            cur = self._db.execute("DELETE FROM metric_chunks WHERE tier = ? AND end_ms < ?",
                                   (tier, before_ms))
        return cur.rowcount

    def delete_series(self, series: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM metric_chunks WHERE series = ?", (series,))

    def bytes_used(self, series: str) -> int:
        """Stored size of a series (payload plus its row's keys), for the benchmark."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(LENGTH(data) + LENGTH(series) + 40), 0) AS b "
                "FROM metric_chunks WHERE series = ?", (series,)).fetchone()
        return int(row["b"])
