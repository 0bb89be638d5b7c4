"""Host probe: pure parsers and decision table, the cache, and one real probe of this host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kasou.errors import EngineError
from kasou.host import probe
from kasou.host.probe import AccelChoice, QemuCaps

PVM_FLAGS = "fpu vme de pse tsc msr pae cx8 apic sep hypervisor lahf_lm svm_lock arat"


@pytest.mark.parametrize(("usable", "error", "flags", "name", "words"), [
    (True, None, {"vmx", "sse2"}, "kvm", ["vmx"]),
    (True, None, {"svm"}, "kvm", ["svm"]),
    (True, None, {"sse2", "hypervisor"}, "tcg", ["opens", "vmx/svm", "PVM"]),
    (False, "cannot open /dev/kvm: Permission denied", {"vmx"}, "tcg",
     ["vmx", "Permission denied"]),
    (False, "cannot open /dev/kvm: No such file or directory", set(), "tcg",
     ["No such file", "no vmx/svm"]),
    (False, None, set(), "tcg", ["unknown error"]),
])
def test_decision_table(usable: bool, error: str | None, flags: set[str], name: str,
                        words: list[str]) -> None:
    choice = probe.decide_accelerator(usable, error, flags)
    assert choice.name == name
    assert choice.reason.startswith(name.upper() + ":")
    for word in words:
        assert word in choice.reason


def test_cpu_flags_takes_the_flags_line_only() -> None:
    text = f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: {PVM_FLAGS}\nbugs\t: svm\n"
    flags = probe.cpu_flags(text)
    assert "arat" in flags and "svm_lock" in flags
    assert "svm" not in flags           # only on the bugs line; a substring match would lie
    assert probe.cpu_flags("no flags here") == set()


def test_choose_accelerator_without_kvm_node(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t: vmx sse2\n")
    choice = probe.choose_accelerator(str(tmp_path / "nokvm"), str(cpuinfo))
    assert choice == AccelChoice("tcg", choice.reason)
    assert "cannot open" in choice.reason and "vmx" in choice.reason


def test_kvm_status_on_a_plain_file(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_text("")
    usable, error = probe.kvm_status(str(fake))
    assert not usable
    assert error is not None and "KVM_GET_API_VERSION" in error


def test_kernel_log_prefers_refined_calibration() -> None:
    log = ("[0.0] tsc: Detected 2445.406 MHz processor\n"
           "[1.2] tsc: Refined TSC clocksource calibration: 2445.399 MHz\n")
    assert probe.parse_kernel_log_tsc_khz(log) == 2445399
    assert probe.parse_kernel_log_tsc_khz(log.splitlines()[0]) == 2445406
    assert probe.parse_kernel_log_tsc_khz("tsc: Detected 3000 MHz processor") == 3000000
    assert probe.parse_kernel_log_tsc_khz("nothing about clocks") is None


def test_cpuinfo_mhz() -> None:
    assert probe.parse_cpuinfo_mhz_khz("model name\t: X\ncpu MHz\t\t: 2445.406\n") == 2445406
    assert probe.parse_cpuinfo_mhz_khz("model name\t: X\n") is None


def test_meminfo() -> None:
    assert probe.parse_meminfo_mib("MemTotal:       24683520 kB\nMemFree: 1 kB\n") == 24105
    with pytest.raises(EngineError):
        probe.parse_meminfo_mib("MemFree: 1 kB\n")


MOUNTS_HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


@pytest.mark.parametrize(("mounts", "version"), [
    (MOUNTS_HYBRID, "hybrid"),
    ("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n", "v2"),
    ("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n", "v1"),
    ("proc /proc proc rw 0 0\n", "none"),
])
def test_cgroup_version(mounts: str, version: str) -> None:
    assert probe.parse_cgroup_version(mounts) == version


def _transcript() -> list[str]:
    return [
        json.dumps({"QMP": {"version": {}, "capabilities": ["oob"]}}),
        json.dumps({"return": {}, "id": 0}),
        json.dumps({"return": {"qemu": {"major": 7, "minor": 2, "micro": 22},
                               "package": " Debian 1:7.2 "}, "id": 1}),
        json.dumps({"return": [
            {"name": "pc-i440fx-7.2", "alias": "pc", "cpu-max": 255, "is-default": True,
             "deprecated": False},
            {"name": "microvm", "cpu-max": 288, "deprecated": False},
        ], "id": 2}),
        json.dumps({"event": "SHUTDOWN", "data": {}, "timestamp": {}}),
        json.dumps({"return": {}, "id": 3}),
    ]


def test_qmp_transcript_to_caps() -> None:
    caps = probe._caps_from_replies("qemu", probe.parse_qmp_replies(_transcript()))
    assert caps.version == "7.2.22" and caps.package == "Debian 1:7.2"
    assert caps.machines["pc-i440fx-7.2"].alias == "pc"
    assert caps.machines["microvm"].cpu_max == 288
    assert caps.resolve("pc") == "pc-i440fx-7.2"
    assert caps.resolve("microvm") == "microvm"
    assert probe._machine_cpu_max(caps) == {"microvm": 288, "pc": 255, "pc-i440fx-7.2": 255}


def test_qmp_error_reply_is_an_engine_error() -> None:
    bad = [json.dumps({"error": {"class": "GenericError", "desc": "nope"}, "id": 2})]
    with pytest.raises(EngineError, match="nope"):
        probe.parse_qmp_replies(bad)


def test_missing_replies_are_an_engine_error() -> None:
    with pytest.raises(EngineError, match="did not answer"):
        probe._caps_from_replies("qemu", {0: {}})


def test_missing_binary_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="cannot run"):
        probe.qemu_capabilities("/nonexistent/qemu-system-x86_64")


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, binary: str, key: dict[str, str], kvm_path: str) -> probe._Probed:
        self.calls += 1
        caps = QemuCaps(binary=binary, version="7.2.0", machines={})
        return probe._Probed(key=key, accelerator="tcg", accelerator_reason="TCG: test",
                             tsc_khz=1000, qemu=caps)


def test_cache_is_reused_and_invalidated_on_key_change(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _Counter()
    key = {"format": "1", "qemu": "/usr/bin/qemu@1", "boot_id": "a", "kvm": "x"}
    monkeypatch.setattr(probe, "_probe_expensive", counter)
    monkeypatch.setattr(probe, "_cache_key", lambda binary, kvm: dict(key))
    probe.host_info(tmp_path)
    probe.host_info(tmp_path)
    assert counter.calls == 1
    assert (tmp_path / probe.CACHE_FILE).exists()
    for field, value in (("qemu", "/usr/bin/qemu@2"), ("boot_id", "b"), ("kvm", "y")):
        key[field] = value
        probe.host_info(tmp_path)
        probe.host_info(tmp_path)
    assert counter.calls == 4


def test_corrupt_cache_is_probed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _Counter()
    monkeypatch.setattr(probe, "_probe_expensive", counter)
    (tmp_path / probe.CACHE_FILE).write_text("{not json")
    info = probe.host_info(tmp_path)
    assert counter.calls == 1 and info.tsc_khz == 1000
    probe.host_info(tmp_path)
    assert counter.calls == 1


def test_no_cache_dir_probes_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _Counter()
    monkeypatch.setattr(probe, "_probe_expensive", counter)
    probe.host_info(None)
    probe.host_info(None)
    assert counter.calls == 2


def test_cache_key_names_qemu_build_and_boot() -> None:
    key = probe._cache_key("qemu-system-x86_64", "/dev/kvm")
    assert set(key) == {"format", "qemu", "boot_id", "kvm"}
    assert "@" in key["qemu"]


def _kvm_without_hw_virt() -> bool:
    usable, _ = probe.kvm_status()
    return usable and not probe.cpu_flags(Path("/proc/cpuinfo").read_text()) & {"vmx", "svm"}


@pytest.mark.skipif(not _kvm_without_hw_virt(),
                    reason="needs this project's PVM host: /dev/kvm works, no vmx/svm flag")
def test_real_probe_picks_tcg_here(tmp_path: Path) -> None:
    info = probe.host_info(tmp_path)
    assert info.accelerator == "tcg"
    assert "vmx/svm" in info.accelerator_reason
    assert info.qemu_version.startswith("7.")
    assert info.machines["pc"] > 1 and "microvm" in info.machines
    assert info.tsc_khz is not None and info.tsc_khz > 100_000
    assert info.cores >= 1 and info.memory_mib > 0
    assert probe.host_info(tmp_path) == info      # second answer from the cache


def test_real_accelerator_agrees_with_the_table() -> None:
    usable, error = probe.kvm_status()
    flags = probe.cpu_flags(Path("/proc/cpuinfo").read_text())
    assert probe.choose_accelerator() == probe.decide_accelerator(usable, error, flags)
