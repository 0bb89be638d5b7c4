"""The metrics sampler and its queries.

One background task samples every running VM (and the host) every `interval` seconds,
all VMs concurrently, feeds the recorder (which downsamples and stores), and keeps the
latest two samples of each series in memory for `kasou top` and /metrics. Chunks are
written once a minute, old chunks pruned once an hour.

The hook keeps the set of running VMs: QEMU's QMP connection comes with started() and
reattached(), and goes with stopped().
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import zlib
from datetime import UTC, datetime

from pydantic import BaseModel
from qemu.qmp import QMPClient

from kasou.engine import balloon
from kasou.engine.runtime import Runtime
from kasou.errors import KasouError
from kasou.metrics.collect import LiveVM, host_sample, sample_vm, tap_names
from kasou.metrics.recorder import DAY_MS, HOUR_MS, MINUTE_MS, Recorder
from kasou.metrics.series import HOST_FIELDS, UNKNOWN, VM_FIELDS, Sample, rate
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.store.base import VMRecord
from kasou.store.metrics import MetricsStore

log = logging.getLogger(__name__)

HOST_SERIES = "@host"
VM_KINDS = tuple(kind for _, kind in VM_FIELDS)
HOST_KINDS = tuple(kind for _, kind in HOST_FIELDS)
FLUSH_EVERY_S = 60.0
MEMORY_EVERY_S = 10.0
PRUNE_EVERY_S = 3600.0
MIB = 1 << 20


class Point(BaseModel):
    """One interval of a VM's life: rates over it, gauges at its end. None: not known."""

    time: str
    cpu_pct: float | None = None          # of one host CPU (200 = two CPUs busy)
    rss_mib: float | None = None
    balloon_mib: float | None = None      # guest memory with the balloon taken out
    guest_total_mib: float | None = None
    guest_free_mib: float | None = None
    guest_available_mib: float | None = None
    disk_read_bps: float | None = None    # bytes per second
    disk_write_bps: float | None = None
    disk_read_iops: float | None = None
    disk_write_iops: float | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    net_rx_pps: float | None = None
    net_tx_pps: float | None = None


class StatsView(BaseModel):
    vm: str
    since_s: int
    resolution_s: float
    points: list[Point]
    summary: dict[str, float | None]


class CurrentVM(BaseModel):
    name: str
    id: str
    project: str
    point: Point


class HostPoint(BaseModel):
    cpu_pct: float | None = None          # of all host CPUs
    mem_total_mib: float | None = None
    mem_available_mib: float | None = None
    ksm_saved_mib: float | None = None
    vms_running: int = 0


class CurrentView(BaseModel):
    interval_s: float
    host: HostPoint
    vms: list[CurrentVM]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _mib(v: int) -> float | None:
    return None if v == UNKNOWN else round(v / MIB, 1)


def point(a: Sample, b: Sample) -> Point:
    """The interval from sample a to sample b (VM_FIELDS order)."""
    dt = (b[0] - a[0]) / 1000

    def r(i: int) -> float | None:
        v = rate(a[i], b[i], dt)
        return None if v is None else round(v, 1)

    cpu = rate(a[1], b[1], dt)
    return Point(time=_iso(b[0]), cpu_pct=None if cpu is None else round(cpu / 1e7, 2),
                 rss_mib=_mib(b[2]), balloon_mib=_mib(b[3]), guest_total_mib=_mib(b[4]),
                 guest_free_mib=_mib(b[5]), guest_available_mib=_mib(b[6]),
                 disk_read_bps=r(7), disk_write_bps=r(8), disk_read_iops=r(9),
                 disk_write_iops=r(10), net_rx_bps=r(11), net_tx_bps=r(12),
                 net_rx_pps=r(13), net_tx_pps=r(14))


def host_point(a: Sample | None, b: Sample) -> HostPoint:
    cpu = None
    if a is not None:
        busy = rate(a[1], b[1], 1.0)
        total = rate(a[2], b[2], 1.0)
        cpu = round(100 * busy / total, 2) if busy is not None and total else None
    return HostPoint(cpu_pct=cpu, mem_total_mib=_mib(b[3]), mem_available_mib=_mib(b[4]),
                     ksm_saved_mib=_mib(b[5]), vms_running=b[6])


def _summary(points: list[Point]) -> dict[str, float | None]:
    def values(name: str) -> list[float]:
        return [v for p in points if (v := getattr(p, name)) is not None]

    cpu = values("cpu_pct")
    last = points[-1] if points else None
    return {
        "cpu_pct_avg": round(sum(cpu) / len(cpu), 2) if cpu else None,
        "cpu_pct_max": max(cpu) if cpu else None,
        "rss_mib_last": last.rss_mib if last else None,
        "balloon_mib_last": last.balloon_mib if last else None,
        "guest_available_mib_last": last.guest_available_mib if last else None,
        "disk_read_bps_avg": _avg(values("disk_read_bps")),
        "disk_write_bps_avg": _avg(values("disk_write_bps")),
        "net_rx_bps_avg": _avg(values("net_rx_bps")),
        "net_tx_bps_avg": _avg(values("net_tx_bps")),
    }


def _retrieve(task: asyncio.Task[Sample]) -> None:
    """A late sample's error is not worth a 'never retrieved' warning: it is dropped."""
    if not task.cancelled():
        task.exception()


def _avg(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


class MetricsService:
    def __init__(self, store: MetricsStore, interval: float = 5.0) -> None:
        self.store = store
        self.interval = interval
        self.recorder = Recorder(store)
        self.live: dict[str, LiveVM] = {}
        self.latest: dict[str, tuple[Sample | None, Sample]] = {}
        self._inflight: dict[str, asyncio.Task[Sample]] = {}
        self._round = 0
        # Balloon and guest memory are asked for about every MEMORY_EVERY_S seconds.
        self.memory_every = max(1, round(MEMORY_EVERY_S / interval))
        self._task: asyncio.Task[None] | None = None

    # -- which VMs run -----------------------------------------------------------------------
    def track(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        self.live[rec.id] = LiveVM(id=rec.id, name=rec.name, project=rec.project, pid=rt.pid,
                                   qmp=qmp, taps=tap_names(rt.argv))

    def untrack(self, vm_id: str) -> None:
        self.live.pop(vm_id, None)
        self.latest.pop(vm_id, None)
        self._inflight.pop(vm_id, None)

    def forget(self, vm_id: str) -> None:
        self.untrack(vm_id)
        self.recorder.forget(vm_id)
        self.store.delete_series(vm_id)

    # -- the sampler --------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metrics-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.recorder.flush()

    async def _loop(self) -> None:
        t0 = time.monotonic()
        next_flush, next_prune = t0 + FLUSH_EVERY_S, t0
        ticks = 0
        while True:
            try:
                await self.sample_once()
                now = time.monotonic()
                if now >= next_flush:
                    self.recorder.flush()
                    next_flush = now + FLUSH_EVERY_S
                if now >= next_prune:
                    self.recorder.prune(int(time.time() * 1000))
                    next_prune = now + PRUNE_EVERY_S
            except Exception:   # one bad round must not end sampling for good
                log.exception("metrics sampling failed")
            ticks += 1
            # A fixed schedule, not sleep(interval) after the work: no drift.
            await asyncio.sleep(max(0.0, t0 + ticks * self.interval - time.monotonic()))

    async def sample_once(self) -> None:
        """Sample every VM at once. A VM whose QEMU has not answered the previous round is
        skipped this round; an answer later than the round is dropped. Nothing is cancelled:
        a cancelled QMP command's late reply only makes noise in qemu.qmp's log."""
        now_ms = int(time.time() * 1000)
        self._round += 1
        tasks: dict[str, tuple[LiveVM, asyncio.Task[Sample]]] = {}
        for vm in list(self.live.values()):
            busy = self._inflight.get(vm.id)
            if busy is not None and not busy.done():
                continue
            # Memory figures every `memory_every` rounds, staggered across VMs.
            memory = not vm.memory_asked or (self._round + zlib.crc32(vm.id.encode())) \
                % self.memory_every == 0
            task = asyncio.create_task(sample_vm(vm, now_ms, memory))
            task.add_done_callback(_retrieve)
            self._inflight[vm.id] = task
            tasks[vm.id] = (vm, task)
        if tasks:
            await asyncio.wait([t for _, t in tasks.values()], timeout=self.interval * 0.8)
        for vm_id, (vm, task) in tasks.items():
            if task.done() and task.exception() is None and vm_id in self.live:
                self._keep(vm_id, vm.project, task.result(), VM_KINDS)
        self._keep(HOST_SERIES, "", host_sample(now_ms, len(self.live)), HOST_KINDS)

    def _keep(self, series: str, project: str, sample: Sample, kinds: tuple[str, ...]) -> None:
        prev = self.latest.get(series)
        self.latest[series] = (prev[1] if prev else None, sample)
        self.recorder.add(series, project, sample, kinds)

    # -- queries ------------------------------------------------------------------------------
    def stats(self, vm_id: str, name: str, since_s: int) -> StatsView:
        now_ms = int(time.time() * 1000)
        step = self._tier_for(since_s)
        start = now_ms - since_s * 1000
        merged = {s[0]: s for s in self.store.samples(vm_id, step, start, now_ms)}
        merged.update({s[0]: s for s in self.recorder.pending(vm_id, step) if s[0] >= start})
        samples = [merged[t] for t in sorted(merged)]
        points = [point(a, b) for a, b in itertools.pairwise(samples)]
        return StatsView(vm=name, since_s=since_s,
                         resolution_s=step / 1000 if step else self.interval,
                         points=points, summary=_summary(points))

    @staticmethod
    def _tier_for(since_s: int) -> int:
        if since_s <= 6 * HOUR_MS // 1000:
            return 0
        if since_s <= 14 * DAY_MS // 1000:
            return MINUTE_MS
        return HOUR_MS

    def current(self, project: str | None = None) -> CurrentView:
        vms = []
        for vm in sorted(self.live.values(), key=lambda v: v.name):
            if project is not None and vm.project != project:
                continue
            pair = self.latest.get(vm.id)
            if pair is None:
                continue
            prev, last = pair
            p = point(prev, last) if prev else point(last, last).model_copy(
                update={"cpu_pct": None})
            vms.append(CurrentVM(name=vm.name, id=vm.id, project=vm.project, point=p))
        host = self.latest.get(HOST_SERIES)
        hp = host_point(host[0], host[1]) if host else HostPoint()
        return CurrentView(interval_s=self.interval, host=hp, vms=vms)


class MetricsHook(VMHook):
    name = "metrics"

    def __init__(self, svc: MetricsService) -> None:
        self.svc = svc

    async def _track(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        self.svc.track(rec, rt, qmp)
        # QEMU asks the guest's balloon driver for its memory figures only when told to.
        with contextlib.suppress(KasouError):
            await balloon.set_stats_interval(
                qmp, max(1, round(self.svc.interval * self.svc.memory_every)))

    async def started(self, rec: VMRecord, rt: Runtime, qmp: QMPClient,
                      revert: Reverter) -> None:
        revert.add(lambda: self.svc.untrack(rec.id))
        await self._track(rec, rt, qmp)

    async def reattached(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        await self._track(rec, rt, qmp)

    async def stopped(self, rec: VMRecord) -> None:
        self.svc.untrack(rec.id)

    async def deleted(self, rec: VMRecord) -> None:
        self.svc.forget(rec.id)
