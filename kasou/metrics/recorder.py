"""Samples in, chunks out: keeps each series' open chunks in memory, downsamples into the
coarser tiers as samples arrive, and writes chunks to the store on `flush()`.

Tiers (resolution, chunk span, retention):
  every sample   10 min chunks   kept 8 days (a week at full rate, plus a day)
  1 minute        6 h chunks     kept 32 days
  1 hour          7 day chunks   kept 400 days
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from kasou.metrics.series import Bucket, Sample, encode_flat
from kasou.store.metrics import MetricsStore

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True)
class Tier:
    step_ms: int        # 0: every sample as taken
    span_ms: int        # one chunk covers this much time
    keep_ms: int        # chunks ending earlier than now - keep_ms are deleted


TIERS = (
    Tier(0, 10 * MINUTE_MS, 8 * DAY_MS),
    Tier(MINUTE_MS, 6 * HOUR_MS, 32 * DAY_MS),
    Tier(HOUR_MS, 7 * DAY_MS, 400 * DAY_MS),
)


@dataclass
class OpenChunk:
    start_ms: int
    width: int
    project: str
    flat: array[int] = field(default_factory=lambda: array("q"))
    dirty: bool = True

    def add(self, sample: Sample) -> None:
        self.flat.extend(sample)
        self.dirty = True

    @property
    def count(self) -> int:
        return len(self.flat) // self.width

    @property
    def end_ms(self) -> int:
        return self.flat[-self.width] if self.flat else self.start_ms

    def samples(self) -> list[Sample]:
        w = self.width
        return [tuple(self.flat[i:i + w]) for i in range(0, len(self.flat), w)]


class Recorder:
    def __init__(self, store: MetricsStore, tiers: Sequence[Tier] = TIERS) -> None:
        self.store = store
        self.tiers = tuple(tiers)
        self._open: dict[tuple[str, int], OpenChunk] = {}
        self._closing: list[tuple[str, int, OpenChunk]] = []
        self._buckets: dict[tuple[str, int], Bucket] = {}

    def add(self, series: str, project: str, sample: Sample, kinds: Sequence[str]) -> None:
        for tier in self.tiers:
            if tier.step_ms == 0:
                self._append(series, project, tier, sample)
                continue
            key = (series, tier.step_ms)
            start = sample[0] - sample[0] % tier.step_ms
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.start_ms != start:
                self._append(series, project, tier, bucket.fold(kinds))
                bucket = None
            if bucket is None:
                bucket = self._buckets[key] = Bucket(start)
            bucket.add(sample)

    def _append(self, series: str, project: str, tier: Tier, sample: Sample) -> None:
        key = (series, tier.step_ms)
        chunk = self._open.get(key)
        if chunk is not None and sample[0] - chunk.start_ms >= tier.span_ms:
            self._closing.append((series, tier.step_ms, chunk))
            chunk = None
        if chunk is None:
            chunk = self._open[key] = OpenChunk(start_ms=sample[0], width=len(sample),
                                                project=project)
        chunk.add(sample)

    def flush(self) -> None:
        rows = [(series, c.project, tier, c.start_ms, c.end_ms, c.count,
                 encode_flat(c.flat, c.width)) for series, tier, c in self._closing]
        for (series, tier), c in self._open.items():
            if c.dirty:
                rows.append((series, c.project, tier, c.start_ms, c.end_ms, c.count,
                             encode_flat(c.flat, c.width)))
                c.dirty = False
        self.store.put_many(rows)
        self._closing.clear()

    def prune(self, now_ms: int) -> None:
        for tier in self.tiers:
            self.store.prune(tier.step_ms, now_ms - tier.keep_ms)

    def pending(self, series: str, step_ms: int) -> list[Sample]:
        """Samples of a series not yet (or not finally) in the store."""
        out: list[Sample] = []
        for s, tier, c in self._closing:
            if s == series and tier == step_ms:
                out += c.samples()
        chunk = self._open.get((series, step_ms))
        if chunk is not None:
            out += chunk.samples()
        return out

    def forget(self, series: str) -> None:
        for key in [k for k in self._open if k[0] == series]:
            del self._open[key]
        for key in [k for k in self._buckets if k[0] == series]:
            del self._buckets[key]
        self._closing = [c for c in self._closing if c[0] != series]
