"""Metrics: chunk encoding, downsampling, the recorder over a real SQLite store, rates, and
the Prometheus exposition (parsed back, and checked by promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kasou.metrics.collect import LiveVM, parse_meminfo, parse_proc_stat, tap_names
from kasou.metrics.prometheus import exposition
from kasou.metrics.recorder import MINUTE_MS, Recorder, Tier
from kasou.metrics.series import (
    UNKNOWN,
    VM_FIELDS,
    decode,
    downsample,
    encode,
    rate,
)
from kasou.metrics.service import HOST_SERIES, VM_KINDS, MetricsService, point
from kasou.store.metrics import MetricsStore
from kasou.store.sqlite import SQLiteStore

W = len(VM_FIELDS)


def vm_sample(t_s: float, cpu_s: float = 0.0, rss_mib: int = 100, rd: int = 0) -> tuple[int, ...]:
    return (int(t_s * 1000), int(cpu_s * 1e9), rss_mib << 20, 256 << 20, 200 << 20,
            50 << 20, 60 << 20, rd, 0, rd // 512, 0, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)


def test_chunks_round_trip_and_compress() -> None:
    samples = [vm_sample(1_700_000_000 + 5 * i, cpu_s=0.01 * i) for i in range(720)]
    blob = encode(samples, W)
    assert decode(blob) == samples
    assert len(blob) < 720 * W * 8 / 20       # idle-like data packs > 20x


def test_downsampling_keeps_counters_last_and_averages_gauges() -> None:
    samples = [vm_sample(60 + i * 20, cpu_s=i, rss_mib=100 + 10 * i) for i in range(6)]
    out = downsample(samples, 60_000, VM_KINDS)
    assert len(out) == 2
    assert out[0][1] == samples[2][1]                  # counter: the bucket's last
    assert out[0][2] == (110 << 20)                    # gauge: mean of 100, 110, 120
    assert out[1][11] == UNKNOWN                       # unknown stays unknown


def test_rates() -> None:
    assert rate(100, 300, 2.0) == 100.0
    assert rate(300, 100, 2.0) is None                 # a reset (QEMU restarted)
    assert rate(UNKNOWN, 5, 1.0) is None
    p = point(vm_sample(0, cpu_s=0.0, rd=0), vm_sample(10, cpu_s=2.5, rd=1 << 20))
    assert p.cpu_pct == 25.0 and p.rss_mib == 100.0
    assert p.disk_read_bps == round((1 << 20) / 10, 1) and p.net_rx_bps is None


@pytest.fixture
def store(tmp_path: Path) -> MetricsStore:
    return MetricsStore(SQLiteStore(tmp_path / "kasou.db"))


def test_recorder_writes_tiers_and_prunes(store: MetricsStore) -> None:
    rec = Recorder(store, (Tier(0, 10 * MINUTE_MS, 60 * MINUTE_MS),
                           Tier(MINUTE_MS, 60 * MINUTE_MS, 120 * MINUTE_MS)))
    t0 = 1_700_000_000
    for i in range(2 * 60 * 12):        # two hours, every 5 s
        rec.add("vm1", "default", vm_sample(t0 + 5 * i, cpu_s=i * 0.05), VM_KINDS)
    rec.flush()
    end_ms = (t0 + 5 * (2 * 60 * 12 - 1)) * 1000
    raw = store.samples("vm1", 0, 0, end_ms)
    assert len(raw) == 2 * 60 * 12 and raw[0][0] == t0 * 1000
    minutes = store.samples("vm1", MINUTE_MS, 0, end_ms)
    assert 118 <= len(minutes) <= 120
    rec.prune(end_ms)
    assert len(store.samples("vm1", 0, 0, end_ms)) < len(raw)      # older than an hour gone
    assert len(store.samples("vm1", MINUTE_MS, 0, end_ms)) == len(minutes)
    assert store.bytes_used("vm1") > 0
    store.delete_series("vm1")
    assert store.samples("vm1", 0, 0, end_ms) == []


def test_stats_merge_stored_and_pending(store: MetricsStore) -> None:
    svc = MetricsService(store, interval=5)
    import time as _time
    now = _time.time()
    for i in range(10):
        svc.recorder.add("vm1", "default", vm_sample(now - 50 + 5 * i, cpu_s=i * 0.5),
                         VM_KINDS)
        if i == 4:
            svc.recorder.flush()
    view = svc.stats("vm1", "web", 300)
    assert len(view.points) == 9
    assert all(p.cpu_pct == 10.0 for p in view.points)
    assert view.summary["cpu_pct_avg"] == 10.0


def test_host_and_vm_parsing() -> None:
    busy, total = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert total > busy > 0
    assert parse_meminfo("MemTotal: 1024 kB\nMemAvailable: 512 kB\n") == (1 << 20, 512 << 10)
    argv = ["q", "-netdev", "tap,id=n0,ifname=kt0,script=no", "-netdev", "user,id=n1"]
    assert tap_names(argv) == ("kt0",)


def _exposition(store: MetricsStore) -> str:
    svc = MetricsService(store)
    for name, vm_id in (("web", "aaa"), ("db", "bbb")):
        svc.live[vm_id] = LiveVM(id=vm_id, name=name, project="default", pid=1, qmp=None)
        svc.latest[vm_id] = (None, vm_sample(1000, cpu_s=3.5, rd=4096))
    svc.latest[HOST_SERIES] = (None, (1000, 10**9, 2 * 10**9, 1 << 30, 1 << 29, 0, 2))
    return exposition(svc).decode()


def test_prometheus_exposition_has_every_vm(store: MetricsStore) -> None:
    text = _exposition(store)
    families: dict[str, Any] = {f.name: f for f in text_string_to_metric_families(text)}
    up = {s.labels["vm"]: s.value for s in families["kasou_vm_up"].samples}
    assert up == {"web": 1.0, "db": 1.0}
    cpu = families["kasou_vm_cpu_seconds"]
    assert cpu.type == "counter"
    assert {s.value for s in cpu.samples} == {3.5}
    assert "kasou_vm_network_receive_bytes_total{" not in text   # unknown: left out


def test_prometheus_exposition_passes_promtool(store: MetricsStore) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: scripts/install-deps.sh"
    check = subprocess.run([promtool, "check", "metrics"], input=_exposition(store),
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
