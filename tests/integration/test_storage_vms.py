"""Storage with real guests through the real CLI and daemon (QEMU sandboxed when root):
snapshots and revert, suspend to disk and restore, hot-plug and I/O limits seen by the
guest, a VM booted from a linked clone, and the refusals users meet on the command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.integration.conftest import Kasou, booted, serial_text, sh, wait_for

MiB = 1 << 20


def ready(k: Kasou, name: str, count: int = 1) -> dict[str, Any]:
    vm = k.vm(name)
    wait_for(lambda: serial_text(vm).count(f"KASOU READY {name}") >= count, 180,
             f"{name} to be ready ({count})")
    return vm


def error_of(k: Kasou, *args: str) -> str:
    r = k.run(*args, check=False)
    assert r.returncode == 1, (args, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: "), r.stderr
    return r.stderr


def test_snapshots_live_and_disk_only(kasou: Kasou) -> None:
    vm = booted(kasou, "snap", "--image", "tiny", "--disk-size", "64M")
    sh(vm, "mke2fs -q /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt && "
           "echo one > /mnt/one && sync")
    pid = sh(vm, "sleep 100000 >/dev/null 2>&1 & echo $!")
    live = kasou.json("vm", "snapshot", "create", "snap", "s1")
    assert live["kind"] == "live" and live["volumes"] == ["snap-disk"]
    assert kasou.vm("snap")["state"] == "running"
    sh(vm, f"echo two > /mnt/two && sync && kill {pid}")

    kasou.run("vm", "snapshot", "revert", "snap", "s1")
    assert kasou.vm("snap")["state"] == "running"
    assert sh(vm, "ls -1 /mnt") == "lost+found\none"       # written after: gone
    sh(vm, f"kill -0 {pid}")                               # started before: back
    assert kasou.vm("snap")["pid"] == vm["pid"]            # same QEMU, no reboot

    # Disk-only while running (file systems frozen when a guest agent answers; tiny
    # has none): taken, but reverting it under the running guest is refused.
    snap = kasou.json("vm", "snapshot", "create", "snap", "d1", "--disk-only")
    assert snap["kind"] == "disk" and snap["vm_state"] == "running"
    err = error_of(kasou, "vm", "snapshot", "revert", "snap", "d1")
    assert "holds disks only" in err and "stop it first" in err
    kasou.run("vm", "snapshot", "delete", "snap", "d1")

    # Stopped: a snapshot is disk-only; a live one reverted now comes back, RAM and all,
    # at the next start.
    kasou.run("vm", "stop", "snap")
    disk = kasou.json("vm", "snapshot", "create", "snap", "s2")
    assert disk["kind"] == "disk" and disk["vm_state"] == "stopped"
    volume = kasou.json("volume", "show", "snap-disk")["path"]
    tags = subprocess.run(["qemu-img", "snapshot", "-l", "-U", volume], check=True,
                          capture_output=True, text=True).stdout
    assert re.search(r"\bs1\b", tags) and re.search(r"\bs2\b", tags)
    kasou.run("vm", "snapshot", "revert", "snap", "s1")
    assert kasou.vm("snap")["extras"]["storage"]["restores_snapshot_at_start"] == "s1"
    kasou.run("vm", "start", "snap")
    vm = kasou.vm("snap")
    assert vm["state"] == "running"
    sh(vm, f"kill -0 {pid} && ls /mnt/one")               # the process and mount are back
    assert serial_text(vm).count("KASOU READY snap") == 1  # resumed, not booted
    assert "restores_snapshot_at_start" not in kasou.vm("snap")["extras"]["storage"]
    names = [s["name"] for s in kasou.json("vm", "snapshot", "list", "snap")]
    assert names == ["s1", "s2"]
    kasou.run("vm", "snapshot", "delete", "snap", "s1")
    assert [s["name"] for s in kasou.json("vm", "snapshot", "list", "snap")] == ["s2"]


def test_suspend_to_disk_and_restore(kasou: Kasou) -> None:
    vm = booted(kasou, "sus", "--image", "tiny", "--disk-size", "16M")
    pid = sh(vm, "sleep 100000 >/dev/null 2>&1 & echo $!")
    sh(vm, "echo in-ram-only > /tmp/marker")
    qemu_pid = vm["pid"]

    view = kasou.json("vm", "suspend", "sus")
    assert view["state"] == "suspended" and view["pid"] is None
    assert not os.path.exists(f"/proc/{qemu_pid}"), "QEMU still runs after suspend"
    saved = view["extras"]["storage"]["saved_state"]
    assert Path(saved["path"]).stat().st_size == saved["size"] > 10 * MiB
    assert "suspended" in error_of(kasou, "vm", "disk", "detach", "sus", "sus-disk")
    assert "suspended" in error_of(kasou, "vm", "snapshot", "create", "sus", "x")

    restored = kasou.json("vm", "start", "sus")
    assert restored["state"] == "running" and restored["pid"] != qemu_pid
    assert sh(restored, "cat /tmp/marker") == "in-ram-only"
    sh(restored, f"kill -0 {pid} && test -b /dev/vda")
    assert serial_text(restored).count("KASOU READY sus") == 1   # restored, not booted
    assert not Path(saved["path"]).exists()
    assert "saved_state" not in kasou.vm("sus")["extras"]["storage"]

    # Suspend again, then throw the saved state away: the next start boots afresh.
    kasou.run("vm", "suspend", "sus")
    assert Path(saved["path"]).exists()
    assert kasou.json("vm", "suspend", "sus", "--discard")["state"] == "stopped"
    assert not Path(saved["path"]).exists()
    kasou.run("vm", "start", "sus")
    runtime = kasou.home / "vms" / restored["id"] / "runtime.json"
    assert "-incoming" not in json.loads(runtime.read_text())["argv"]


def _volume_pattern(path: str, pattern: int) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} 0 1M", path],
                   check=True, capture_output=True)


def _read_rate(vm: dict[str, Any], dev: str, skip_mib: int, mib: int = 3) -> float:
    """MiB/s of an O_DIRECT read in the guest, timed by the guest's own clock."""
    out = sh(vm, f"a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/{dev} of=/dev/null bs=64k "
                 f"count={mib * 16} skip={skip_mib * 16} iflag=direct 2>/dev/null; "
                 "b=$(cut -d' ' -f1 /proc/uptime); echo T=$a,$b")
    start, end = (float(x) for x in re.findall(r"T=([\d.]+),([\d.]+)", out)[0])
    return mib / max(end - start, 0.01)


def test_clone_hotplug_and_io_limits(kasou: Kasou, tmp_path: Path) -> None:
    kasou.run("volume", "create", "base", "--size", "64M")
    _volume_pattern(kasou.json("volume", "show", "base")["path"], 0x6B)
    kasou.run("volume", "template", "base")
    vm = booted(kasou, "hot", "--image", "tiny", "--machine", "pc", "--from", "base")
    # the linked clone carries the template's bytes
    assert sh(vm, "dd if=/dev/vda bs=16 count=1 2>/dev/null | od -An -tx1").split()[:2] == \
        ["6b", "6b"]
    root = kasou.json("vm", "disk", "list", "hot")[0]
    assert root["volume"] == "hot-disk" and root["owned"]
    assert sh(vm, "cat /sys/block/vda/serial") == root["serial"]

    kasou.run("volume", "create", "extra", "--size", "64M")
    disk = kasou.json("vm", "disk", "attach", "hot", "extra")
    wait_for(lambda: disk["serial"] in sh(vm, "cat /sys/block/vd*/serial; echo"), 30,
             "the hot-plugged disk in the guest")
    dev = sh(vm, f"for d in /sys/block/vd*; do grep -q {disk['serial']} $d/serial && "
                 "basename $d; done")
    assert dev == "vdb"
    # grown while the guest runs: the guest sees the new size
    assert kasou.json("volume", "resize", "extra", "96M")["size"] == 96 * MiB
    wait_for(lambda: sh(vm, "cat /sys/block/vdb/size") == str(96 * MiB // 512), 30,
             "the guest to see the grown disk")

    kasou.run("vm", "disk", "limit", "hot", "extra", "--bps", "1M")
    limited = _read_rate(vm, dev, skip_mib=0)
    assert limited <= 1.3, f"read {limited:.2f} MiB/s with a 1 MiB/s limit"
    kasou.run("vm", "disk", "limit", "hot", "extra")          # no options: lifted
    free = _read_rate(vm, dev, skip_mib=8)
    assert free > 2 * limited, f"unlimited {free:.2f} MiB/s vs limited {limited:.2f}"
    listed = kasou.json("vm", "disk", "list", "hot")
    assert [d["volume"] for d in listed] == ["hot-disk", "extra"]

    kasou.run("vm", "disk", "detach", "hot", "extra")
    wait_for(lambda: "vdb" not in sh(vm, "ls -1 /sys/block"), 30, "vdb to leave the guest")
    assert [d["volume"] for d in kasou.json("vm", "disk", "list", "hot")] == ["hot-disk"]
    kasou.run("volume", "delete", "extra")


def test_storage_errors_on_the_command_line(kasou: Kasou, tmp_path: Path) -> None:
    kasou.run("volume", "create", "v1", "--size", "16M")
    kasou.run("volume", "create", "tpl", "--size", "16M")
    kasou.run("volume", "template", "tpl")
    kasou.run("vm", "create", "user", "--image", "tiny", "--volume", "v1", "--from", "tpl")
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n" * 500)
    before = kasou.json("volume", "list")

    assert "--shrink" in error_of(kasou, "volume", "resize", "v1", "8M")
    assert "attached to VM user" in error_of(kasou, "volume", "delete", "v1")
    assert "linked clone" in error_of(kasou, "volume", "delete", "tpl")
    assert "does not look like a disk image" in error_of(kasou, "volume", "import", "t",
                                                         str(text))
    assert "snapshot" in error_of(kasou, "vm", "snapshot", "create", "user", "../etc")
    assert "all digits" in error_of(kasou, "vm", "snapshot", "create", "user", "42")
    assert "cannot suspend VM 'user': it is stopped" in error_of(kasou, "vm", "suspend",
                                                                 "user")
    assert "microvm" in error_of(kasou, "vm", "create", "m", "--from", "tpl", "--machine",
                                 "microvm")
    assert kasou.json("volume", "list") == before
    assert json.loads(kasou.run("vm", "list", "--json").stdout)[0]["name"] == "user"

    image = tmp_path / "good.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "32M"], check=True)
    imported = kasou.json("volume", "import", "good", str(image), "--template")
    assert imported["state"] == "ready" and imported["template"] and imported["size"] == 32 * MiB
