"""Limits validation, the sandbox's command-line rewrite (with a recording broker), QEMU
option strings, uid choice and KSM over a fake sysfs directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kasou.errors import EngineError, InvalidSpec, LaunchFailure
from kasou.host.ksm import ksm_info, set_ksm
from kasou.isolation.limits import Limits, check_limits, memory_limit_bytes, merge
from kasou.isolation.sandbox import (
    SECCOMP,
    UID_BASE,
    allocate_uid,
    join_opts,
    sandbox_argv,
    split_opts,
)
from kasou.spec import parse_spec

HOST = frozenset({0, 1})


def check(limits: Limits, vcpus: int = 1, memory: int = 256) -> None:
    check_limits(limits, vcpus=vcpus, memory_mib=memory, host_cpus=HOST, floor_mib=96,
                 prefix="limits.")


def test_limits_parse_and_normalise() -> None:
    lim = Limits.model_validate({"cpu_limit": 0.25, "pin": "1,0", "memory_target": "128M",
                                 "cpu_weight": 300, "io_weight": 50})
    assert lim.pin == "0-1" and lim.cpus() == {0, 1} and lim.memory_target == 128
    assert Limits.model_validate({"pin": 0}).pin == "0"
    assert Limits.model_validate({"memory_target": 200}).memory_target == 200


@pytest.mark.parametrize("data", [
    {"cpu_limit": 0.001}, {"cpu_limit": float("nan")}, {"cpu_weight": 0},
    {"cpu_weight": 10001}, {"io_weight": 1001}, {"pin": "x"}, {"pin": ""},
    {"memory_target": "1.5K"}, {"memory_target": "lots"}, {"bogus": 1},
])
def test_bad_limits_fail_validation(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Limits.model_validate(data)


@pytest.mark.parametrize(("limits", "field", "words"), [
    ({"cpu_limit": 1.5}, "limits.cpu_limit", "more than the VM's 1 vCPU"),
    ({"pin": "2"}, "limits.pin", "CPU 2 is not one this host"),
    ({"memory_target": 512}, "limits.memory_target", "above the VM's memory"),
    ({"memory_target": 64}, "limits.memory_target", "below the safe floor of 96"),
])
def test_limits_checked_against_vm_and_host(limits: dict[str, object], field: str,
                                            words: str) -> None:
    with pytest.raises(InvalidSpec) as e:
        check(Limits.model_validate(limits))
    assert e.value.field == field and words in e.value.message


def test_good_limits_pass_and_merge() -> None:
    lim = Limits(cpu_limit=2.0, pin="0-1", memory_target=128)
    check(lim, vcpus=2)
    merged = merge(lim, {"cpu_limit": None, "cpu_weight": 50})
    assert merged.cpu_limit is None and merged.cpu_weight == 50 and merged.pin == "0-1"


def test_spec_carries_limits_with_field_names() -> None:
    spec = parse_spec({"name": "a", "image": "tiny", "limits": {"cpu_limit": 0.5}})
    assert spec.limits is not None and spec.limits.cpu_limit == 0.5
    with pytest.raises(InvalidSpec) as e:
        parse_spec({"name": "a", "image": "tiny", "limits": {"cpu_weight": -1}})
    assert e.value.field == "limits.cpu_weight"


def test_memory_limit_is_guest_plus_overhead() -> None:
    assert memory_limit_bytes(256, "tcg") == (256 + 128 + 64) << 20
    assert memory_limit_bytes(256, "kvm") == (256 + 64 + 64) << 20


@pytest.mark.parametrize(("text", "items"), [
    ("socket,id=a,path=/x,,y", [(None, "socket"), ("id", "a"), ("path", "/x,y")]),
    ("driver=file,filename=/a", [("driver", "file"), ("filename", "/a")]),
    ("tap", [(None, "tap")]),
])
def test_option_strings_round_trip(text: str, items: list[tuple[str | None, str]]) -> None:
    assert split_opts(text) == items
    assert join_opts(items) == text


class Recorder:
    """A broker that names descriptors without opening anything."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def fdset(self, path: str, *, writable: bool, log: bool = False) -> str:
        self.calls.append(("fdset", path, "rw" if writable else "ro", "log" if log else ""))
        return f"/dev/fdset/{len(self.calls)}"

    def kernel_file(self, path: str) -> str:
        self.calls.append(("kernel", path))
        return f"/proc/self/fd/{10 + len(self.calls)}"

    def listen_socket(self, path: str) -> str:
        self.calls.append(("socket", path))
        return str(20 + len(self.calls))

    def tap(self, ifname: str) -> str:
        self.calls.append(("tap", ifname))
        return "30"

    def device(self, path: str) -> str:
        self.calls.append(("device", path))
        return "31"


ARGV = [
    "qemu-system-x86_64", "-nodefaults", "-kernel", "/img/vmlinuz", "-initrd", "/img/initrd",
    "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/CODE.fd",
    "-drive", "if=pflash,format=raw,unit=1,file=/vms/1/VARS.fd",
    "-blockdev", "driver=file,node-name=disk0-file,filename=/srv/a,,b.img,read-only=off",
    "-blockdev", "driver=qcow2,node-name=disk0,file=disk0-file",
    "-blockdev", '{"driver":"file","node-name":"v0","filename":"/pool/v.qcow2"}',
    "-blockdev", "driver=file,node-name=cd,filename=/iso/x.iso,read-only=on",
    "-netdev", "tap,id=net0,ifname=kt0,script=no,downscript=no,vhost=on",
    "-netdev", "user,id=net1",
    "-chardev", "socket,id=console,path=/vms/1/console.sock,server=on,wait=off,"
                "logfile=/vms/1/serial.log,logappend=on",
    "-chardev", "socket,id=qmp,path=/vms/1/qmp.sock,server=on,wait=off",
    "-append", "console=ttyS0", "-daemonize", "-pidfile", "/vms/1/pid",
]


def test_sandbox_rewrites_every_file_and_socket_into_descriptors() -> None:
    broker = Recorder()
    out = sandbox_argv(ARGV, broker)
    text = " ".join(out)
    assert "-daemonize" not in out and "-pidfile" not in out
    assert out[-2:] == ["-sandbox", SECCOMP]
    assert SECCOMP == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
    for path in ("/img/", "/srv/", "/pool/", "/iso/", "/vms/", "OVMF"):
        assert path not in text, f"{path} still reaches QEMU as a path"
    assert ("kernel", "/img/vmlinuz") in broker.calls
    assert ("fdset", "/usr/share/OVMF/CODE.fd", "ro", "") in broker.calls
    assert ("fdset", "/vms/1/VARS.fd", "rw", "") in broker.calls
    assert ("fdset", "/srv/a,b.img", "rw", "") in broker.calls
    assert ("fdset", "/pool/v.qcow2", "rw", "") in broker.calls
    assert ("fdset", "/iso/x.iso", "ro", "") in broker.calls
    assert ("fdset", "/vms/1/serial.log", "rw", "log") in broker.calls
    assert ("socket", "/vms/1/qmp.sock") in broker.calls
    assert ("tap", "kt0") in broker.calls and ("device", "/dev/vhost-net") in broker.calls
    tap = out[out.index("-netdev") + 1]
    assert tap == "tap,id=net0,fd=30,vhost=on,vhostfd=31"
    assert "user,id=net1" in out
    assert any(a.startswith("socket,id=qmp,fd=") and "path=" not in a for a in out)
    assert "-append" in out and "console=ttyS0" in out


def test_exec_migration_is_refused_under_the_sandbox() -> None:
    with pytest.raises(LaunchFailure, match="spawn=deny"):
        sandbox_argv(["qemu", "-incoming", "exec:cat /x"], Recorder())


def test_uid_choice_skips_ids_in_use() -> None:
    first = allocate_uid("abc", in_use=set())
    assert UID_BASE <= first < UID_BASE + 1_000_000
    assert allocate_uid("abc", in_use=set()) == first       # stable for one VM
    assert allocate_uid("abc", in_use={first}) != first


def test_ksm_over_a_fake_sysfs(tmp_path: Path) -> None:
    assert ksm_info(tmp_path).available is False
    with pytest.raises(EngineError, match="no KSM"):
        set_ksm(True, d=tmp_path)
    for name, value in (("run", "0"), ("pages_shared", "10"), ("pages_sharing", "250"),
                        ("full_scans", "3")):
        (tmp_path / name).write_text(value + "\n")
    info = set_ksm(True, d=tmp_path)
    assert info.running and (tmp_path / "run").read_text() == "1"
    assert info.saved_bytes == 250 * 4096 and info.pages_shared == 10
    assert not set_ksm(False, unmerge=True, d=tmp_path).running
    assert (tmp_path / "run").read_text() == "2"
