"""Golden and targeted tests of the pure QEMU argv builders.

Regenerate the golden files after an intended change with
    KASOU_UPDATE_GOLDEN=1 pytest tests/unit/test_argv.py
and review the diff: every line is one argument QEMU will get.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from kasou.engine import argv
from kasou.engine.plan import DiskPlan, LaunchPlan, NicPlan, RunPaths
from kasou.errors import InvalidSpec

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
KERNEL = "/var/cache/kasou/images/tiny/vmlinuz"
INITRD = "/var/cache/kasou/images/tiny/initrd.img"


def _paths(vm_id: str) -> RunPaths:
    run = f"/var/lib/kasou/vms/{vm_id}"
    return RunPaths(qmp=f"{run}/qmp.sock", console=f"{run}/console.sock",
                    serial_log=f"{run}/serial.log", pidfile=f"{run}/pid")


def _plan(**changes: Any) -> LaunchPlan:
    base = LaunchPlan(vm_id="vm-1", name="web", machine="pc", accel="tcg", vcpus=2,
                      memory_mib=512, paths=_paths("vm-1"))
    return dataclasses.replace(base, **changes)


def _kernel(**changes: Any) -> LaunchPlan:
    return _plan(kernel=KERNEL, initrd=INITRD, cmdline="console=ttyS0 quiet", **changes)


CASES: dict[str, LaunchPlan] = {
    "microvm-tcg-kernel": _kernel(machine="microvm", tsc_khz=2445406,
                                  disks=(DiskPlan("/var/lib/kasou/vms/vm-1/root.qcow2"),)),
    "pc-tcg-kernel": _kernel(disks=(DiskPlan("/var/lib/kasou/vms/vm-1/root.qcow2"),),
                             nics=(NicPlan("52:54:00:00:00:01"),)),
    "q35-tcg-disk-iso": _plan(machine="q35", disks=(
        DiskPlan("/var/lib/kasou/volumes/blank.qcow2"),
        DiskPlan("/srv/iso/debian-12.iso", format="raw", media="cdrom"),
    )),
    "pc-uefi-disk": _plan(firmware="uefi", ovmf_code="/usr/share/OVMF/OVMF_CODE_4M.fd",
                          ovmf_vars="/var/lib/kasou/vms/vm-1/OVMF_VARS.fd",
                          disks=(DiskPlan("/var/lib/kasou/vms/vm-1/root.qcow2"),)),
    "kvm-pc": _kernel(accel="kvm", tsc_khz=2445406,
                      disks=(DiskPlan("/var/lib/kasou/vms/vm-1/root.qcow2"),)),
    "microvm-with-nic-forwards": _kernel(machine="microvm", tsc_khz=2445406, nics=(
        NicPlan("52:54:00:00:00:02",
                forwards=("tcp:127.0.0.1:2222-:22", "udp:127.0.0.1:5353-:53")),
        NicPlan("52:54:00:00:00:03"),
    )),
    "q35-display-seed": _kernel(machine="q35", display=True, disks=(
        DiskPlan("/var/lib/kasou/vms/vm-1/root.qcow2"),
        DiskPlan("/var/lib/kasou/vms/vm-1/seed.iso", format="raw", media="cdrom"),
    )),
    # the debian image: its overlay, the cloud-init seed, the guest agent's channel
    "pc-debian-seed-agent": _kernel(
        paths=dataclasses.replace(_paths("vm-1"), agent="/var/lib/kasou/vms/vm-1/qga.sock"),
        nics=(NicPlan("52:54:00:00:00:04", forwards=("tcp:127.0.0.1:2222-:22",)),),
        disks=(DiskPlan("/var/lib/kasou/vms/vm-1/root.qcow2"),
               DiskPlan("/var/lib/kasou/vms/vm-1/seed.iso", format="raw", readonly=True,
                        media="cdrom"))),
    "microvm-agent": _kernel(
        machine="microvm", tsc_khz=2445406,
        paths=dataclasses.replace(_paths("vm-1"), agent="/var/lib/kasou/vms/vm-1/qga.sock")),
    # a desktop: VGA plus a VNC server without a listener (kasou/console)
    "pc-display-vnc": _plan(
        kernel=KERNEL, initrd=INITRD, cmdline="console=tty0 console=ttyS0 quiet", display=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    got = "\n".join(argv.build_argv(CASES[case])) + "\n"
    path = GOLDEN / f"{case}.argv"
    if os.environ.get("KASOU_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"no golden file {path}; run with KASOU_UPDATE_GOLDEN=1"
    assert got == path.read_text()


def _after(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_escape_doubles_commas() -> None:
    assert argv.qemu_opt_escape("/a,b,,c") == "/a,,b,,,,c"
    assert argv.qemu_opt_escape("plain=path") == "plain=path"


def test_paths_with_commas_are_escaped_everywhere() -> None:
    run = "/srv/odd,dir"
    plan = _plan(name="a,b", paths=RunPaths(qmp=f"{run}/q", console=f"{run}/c",
                                            serial_log=f"{run}/s", pidfile=f"{run}/p"),
                 disks=(DiskPlan(f"{run}/d.qcow2"),), firmware="uefi",
                 ovmf_code=f"{run}/code.fd", ovmf_vars=f"{run}/vars.fd")
    args = argv.build_argv(plan)
    joined = "\n".join(args)
    assert "guest=a,,b," in joined
    assert f"path={run.replace(',', ',,')}/q," in joined
    assert f"logfile={run.replace(',', ',,')}/s," in joined
    assert f"filename={run.replace(',', ',,')}/d.qcow2" in joined
    assert f"file={run.replace(',', ',,')}/vars.fd" in joined
    # -pidfile takes a bare path, not options: no escaping there.
    assert _after(args, "-pidfile") == [f"{run}/p"]


def test_tsc_only_on_microvm_under_tcg() -> None:
    micro = argv.kernel_cmdline(_kernel(machine="microvm", tsc_khz=1000))
    assert "tsc_early_khz=1000" in micro and "tsc=reliable" in micro
    assert "tsc_early_khz" not in argv.kernel_cmdline(_kernel(machine="pc", tsc_khz=1000))
    assert "tsc_early_khz" not in argv.kernel_cmdline(
        _kernel(machine="microvm", accel="kvm", tsc_khz=1000))
    assert "tsc_early_khz" not in argv.kernel_cmdline(_kernel(machine="microvm"))


@pytest.mark.parametrize(("machine", "accel", "expected"), [
    ("pc", "tcg", True), ("q35", "tcg", True), ("pc", "kvm", False),
    ("q35", "kvm", False), ("microvm", "tcg", False),
])
def test_no_timer_check_only_pc_q35_tcg(machine: str, accel: str, expected: bool) -> None:
    line = argv.kernel_cmdline(_kernel(machine=machine, accel=accel, tsc_khz=1000))
    assert ("no_timer_check" in line) is expected


def test_cmdline_keeps_plan_words_first() -> None:
    plan = _kernel(extra_cmdline=("ds=nocloud",))
    assert argv.kernel_cmdline(plan) == "console=ttyS0 quiet ds=nocloud no_timer_check"


def test_cdrom_is_read_only_and_boots_after_disks() -> None:
    plan = _plan(machine="q35", disks=(DiskPlan("/i.iso", "raw", media="cdrom"),
                                       DiskPlan("/d.qcow2")))
    args = argv.drive_args(plan)
    blockdevs = _after(args, "-blockdev")
    assert all("read-only=on" in b for b in blockdevs if "disk0" in b)
    assert all("read-only=off" in b for b in blockdevs if "disk1" in b)
    devices = _after(args, "-device")
    assert devices[0].startswith("ide-cd,bus=ide.0,drive=disk0,")
    assert devices[0].endswith("bootindex=2")
    assert devices[1].endswith("bootindex=1")


def test_cdrom_on_microvm_is_read_only_virtio_disk() -> None:
    plan = _plan(machine="microvm", disks=(DiskPlan("/s.iso", "raw", media="cdrom"),))
    args = argv.drive_args(plan)
    assert _after(args, "-device") == ["virtio-blk-device,drive=disk0,id=disk0-dev"]
    assert all("read-only=on" in b for b in _after(args, "-blockdev"))


def test_no_bootindex_with_kernel() -> None:
    plan = _kernel(disks=(DiskPlan("/d.qcow2"),))
    assert "bootindex" not in " ".join(argv.drive_args(plan))


def test_too_many_cdroms_on_pc() -> None:
    cds = tuple(DiskPlan(f"/{i}.iso", "raw", media="cdrom") for i in range(3))
    with pytest.raises(InvalidSpec, match="at most 2 CD-ROMs"):
        argv.drive_args(_plan(disks=cds))


def test_uefi_refused_on_microvm_and_without_vars() -> None:
    with pytest.raises(InvalidSpec, match="pc or q35"):
        argv.firmware_args(_plan(machine="microvm", firmware="uefi", ovmf_code="/c",
                                 ovmf_vars="/v"))
    with pytest.raises(InvalidSpec, match="vars"):
        argv.firmware_args(_plan(firmware="uefi", ovmf_code="/c"))


def test_relative_pflash_path_is_not_a_protocol() -> None:
    args = argv.firmware_args(_plan(firmware="uefi", ovmf_code="nbd:x", ovmf_vars="/v"))
    assert "file=./nbd:x" in args[1]


def test_virtio_transport_follows_machine() -> None:
    assert "virtio-rng-device,id=rng0" in argv.rng_args(_plan(machine="microvm"))
    assert "virtio-rng-pci,id=rng0" in argv.rng_args(_plan(machine="q35"))


def test_display_none_always_and_vga_only_with_display() -> None:
    assert argv.display_args(_plan()) == ["-display", "none"]
    assert "VGA,id=video0" in argv.display_args(_plan(display=True))
    with pytest.raises(InvalidSpec, match="microvm"):
        argv.display_args(_plan(machine="microvm", display=True))


def test_vnc_listens_nowhere_and_only_with_display() -> None:
    assert "-vnc" not in argv.display_args(_plan())
    args = argv.display_args(_plan(display=True))
    assert args[args.index("-vnc") + 1] == "none"     # viewers come in over QMP add_client


def test_accel_and_cpu() -> None:
    assert argv.accel_args(_plan()) == ["-accel", "tcg,thread=multi,tb-size=64"]
    assert argv.cpu_args(_plan()) == ["-cpu", "qemu64,+arat"]
    assert argv.accel_args(_plan(accel="kvm")) == ["-accel", "kvm"]
    assert argv.cpu_args(_plan(accel="kvm")) == ["-cpu", "host"]


def test_bad_sizes_name_the_field() -> None:
    with pytest.raises(InvalidSpec) as err:
        argv.smp_args(_plan(vcpus=0))
    assert err.value.field == "vcpus"
    with pytest.raises(InvalidSpec) as err:
        argv.memory_args(_plan(memory_mib=0))
    assert err.value.field == "memory_mib"


def test_initrd_without_kernel_is_refused() -> None:
    with pytest.raises(InvalidSpec, match="need a kernel"):
        argv.boot_args(_plan(initrd="/i"))


def test_builders_are_pure() -> None:
    plan = CASES["pc-tcg-kernel"]
    assert argv.build_argv(plan) == argv.build_argv(plan)
    assert argv.build_argv(plan)[0] == "qemu-system-x86_64"
