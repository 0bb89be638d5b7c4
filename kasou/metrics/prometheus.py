"""The latest samples in the Prometheus text exposition format (GET /metrics), written by
the prometheus_client library so the format is right by construction. Counters are the
cumulative values themselves (Prometheus derives rates); gauges are as last sampled.
Figures a VM did not report (UNKNOWN) are left out rather than exported as zero.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kasou.metrics.series import UNKNOWN
from kasou.metrics.service import HOST_SERIES, MetricsService

LABELS = ["vm", "id", "project"]

# (field index in VM_FIELDS, metric name, help, counter?, scale)
VM_METRICS: tuple[tuple[int, str, str, bool, float], ...] = (
    (1, "kasou_vm_cpu_seconds", "CPU time used by the VM's QEMU process (all threads)", True,
     1e-9),
    (2, "kasou_vm_memory_rss_bytes", "Resident memory of the VM's QEMU process", False, 1),
    (3, "kasou_vm_balloon_actual_bytes", "Guest memory with the balloon taken out", False, 1),
    (4, "kasou_vm_guest_memory_total_bytes", "Guest MemTotal, from the balloon driver", False,
     1),
    (5, "kasou_vm_guest_memory_free_bytes", "Guest free memory, from the balloon driver",
     False, 1),
    (6, "kasou_vm_guest_memory_available_bytes", "Guest MemAvailable, from the balloon driver",
     False, 1),
    (7, "kasou_vm_disk_read_bytes", "Bytes the guest read from its disks", True, 1),
    (8, "kasou_vm_disk_written_bytes", "Bytes the guest wrote to its disks", True, 1),
    (9, "kasou_vm_disk_reads", "Read operations on the guest's disks", True, 1),
    (10, "kasou_vm_disk_writes", "Write operations on the guest's disks", True, 1),
    (11, "kasou_vm_network_receive_bytes", "Bytes the guest received on TAP NICs", True, 1),
    (12, "kasou_vm_network_transmit_bytes", "Bytes the guest sent on TAP NICs", True, 1),
    (13, "kasou_vm_network_receive_packets", "Packets the guest received on TAP NICs", True, 1),
    (14, "kasou_vm_network_transmit_packets", "Packets the guest sent on TAP NICs", True, 1),
)


class _Collector(Collector):
    def __init__(self, svc: MetricsService) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        yield from self._vms()
        yield from self._host()

    def _vms(self) -> Iterator[Metric]:
        families: list[tuple[int, float, Metric]] = []
        for index, name, text, counter, scale in VM_METRICS:
            cls = CounterMetricFamily if counter else GaugeMetricFamily
            families.append((index, scale, cls(name, text, labels=LABELS)))
        up = GaugeMetricFamily("kasou_vm_up", "1 for every VM kasou samples", labels=LABELS)
        for vm in sorted(self.svc.live.values(), key=lambda v: (v.project, v.name)):
            pair = self.svc.latest.get(vm.id)
            labels = [vm.name, vm.id, vm.project]
            up.add_metric(labels, 1)
            if pair is None:
                continue
            sample = pair[1]
            for index, scale, family in families:
                if sample[index] != UNKNOWN:
                    family.add_metric(labels, sample[index] * scale)   # type: ignore[attr-defined]
        yield up
        for _, _, family in families:
            yield family

    def _host(self) -> Iterator[Metric]:
        pair = self.svc.latest.get(HOST_SERIES)
        if pair is None:
            return
        s = pair[1]
        yield _gauge("kasou_host_vms_running", "VMs kasou samples on this host", s[6])
        if s[1] != UNKNOWN:
            c = CounterMetricFamily("kasou_host_cpu_busy_seconds",
                                    "Non-idle CPU time of all host CPUs")
            c.add_metric([], s[1] / 1e9)
            yield c
        for value, name, text in ((s[3], "kasou_host_memory_total_bytes", "Host MemTotal"),
                                  (s[4], "kasou_host_memory_available_bytes",
                                   "Host MemAvailable"),
                                  (s[5], "kasou_host_ksm_saved_bytes",
                                   "Memory KSM saves by sharing identical pages")):
            if value != UNKNOWN:
                yield _gauge(name, text, value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, text)
    g.add_metric([], value)
    return g


def exposition(svc: MetricsService) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(svc))
    return generate_latest(registry)
