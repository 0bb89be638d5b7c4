"""Time series in compressed chunks: pure functions, no I/O.

A sample is a tuple of integers (timestamp in ms first). Counters are cumulative (CPU
nanoseconds, bytes read...), so a rate over any span is one subtraction and downsampling a
counter keeps the bucket's last value; gauges (RSS, balloon) are averaged per bucket.

A chunk stores its samples column by column, each column as deltas from the previous
value, packed as 64-bit integers and zlib-compressed. Idle VMs give long runs of zero
deltas, and counters grow by similar steps, so a day of samples every 5 s (17,280) packs
into a few hundred KiB at most (bench/isolation.py measures it).
"""

from __future__ import annotations

import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

Sample = tuple[int, ...]
UNKNOWN = -1      # a figure the source did not give (no guest driver, no TAP...)

VM_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ms", "time"),
    ("cpu_ns", "counter"),
    ("rss_bytes", "gauge"),
    ("balloon_bytes", "gauge"),
    ("guest_total_bytes", "gauge"),
    ("guest_free_bytes", "gauge"),
    ("guest_available_bytes", "gauge"),
    ("blk_rd_bytes", "counter"),
    ("blk_wr_bytes", "counter"),
    ("blk_rd_ops", "counter"),
    ("blk_wr_ops", "counter"),
    ("net_rx_bytes", "counter"),
    ("net_tx_bytes", "counter"),
    ("net_rx_packets", "counter"),
    ("net_tx_packets", "counter"),
)

HOST_FIELDS: tuple[tuple[str, str], ...] = (
    ("ts_ms", "time"),
    ("cpu_busy_ns", "counter"),      # all CPUs, non-idle time
    ("cpu_total_ns", "counter"),
    ("mem_total_bytes", "gauge"),
    ("mem_available_bytes", "gauge"),
    ("ksm_saved_bytes", "gauge"),
    ("vms_running", "gauge"),
)

FORMAT = 1


def encode(samples: Sequence[Sample], width: int) -> bytes:
    """Column-wise deltas, zlib. Every sample has `width` integers."""
    flat = array("q")
    for s in samples:
        flat.extend(s)
    return encode_flat(flat, width)


def encode_flat(flat: array[int], width: int) -> bytes:
    """As encode(), from samples laid end to end in one array (how open chunks are kept:
    8 bytes a figure instead of a Python int object each)."""
    n = len(flat) // width
    cols = array("q")
    for c in range(width):
        prev = 0
        for v in flat[c::width]:
            cols.append(v - prev)
            prev = v
    header = array("q", [FORMAT, n, width])
    return zlib.compress(header.tobytes() + cols.tobytes(), 6)


def decode(blob: bytes) -> list[Sample]:
    raw = array("q")
    raw.frombytes(zlib.decompress(blob))
    fmt, n, width = raw[0], raw[1], raw[2]
    if fmt != FORMAT:
        raise ValueError(f"metrics chunk format {fmt} is not known")
    columns: list[list[int]] = []
    for c in range(width):
        col, total = [], 0
        for d in raw[3 + c * n:3 + (c + 1) * n]:
            total += d
            col.append(total)
        columns.append(col)
    return [tuple(col[i] for col in columns) for i in range(n)]


@dataclass
class Bucket:
    """Samples of one downsampling interval, folded into one."""

    start_ms: int
    count: int = 0
    sums: list[int] | None = None
    last: Sample | None = None

    def add(self, sample: Sample) -> None:
        if self.sums is None:
            self.sums = [0] * len(sample)
        self.sums = [a + b for a, b in zip(self.sums, sample, strict=True)]
        self.count += 1
        self.last = sample

    def fold(self, kinds: Sequence[str]) -> Sample:
        assert self.last is not None and self.sums is not None
        out = []
        for i, kind in enumerate(kinds):
            if kind == "gauge" and self.last[i] != UNKNOWN:
                out.append(self.sums[i] // self.count)
            else:
                out.append(self.last[i])   # time and counters: the bucket's last value
        return tuple(out)


def downsample(samples: Sequence[Sample], step_ms: int, kinds: Sequence[str]) -> list[Sample]:
    out: list[Sample] = []
    bucket: Bucket | None = None
    for s in samples:
        start = s[0] - s[0] % step_ms
        if bucket is None or bucket.start_ms != start:
            if bucket is not None:
                out.append(bucket.fold(kinds))
            bucket = Bucket(start)
        bucket.add(s)
    if bucket is not None:
        out.append(bucket.fold(kinds))
    return out


def rate(a: int, b: int, dt_s: float) -> float | None:
    """Per-second rate between two counter readings; None across a reset or a gap."""
    if a == UNKNOWN or b == UNKNOWN or dt_s <= 0 or b < a:
        return None
    return (b - a) / dt_s
