"""Desktop pools with real guests through the real CLI and daemon: desktops as linked
clones of a template, assigned to users and booted, refusals (twice, full, too large for
the host, shrinking under users, deleting a desktop behind the pool's back), and returned
desktops reset to the template or kept, per policy, checked on the disks' bytes."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.integration.conftest import Kasou, sh, wait_for, wait_serial

MARK = 0x5A       # what a user writes on their desktop's disk
TEMPLATE = 0x6B   # what the template holds


def error_of(k: Kasou, *args: str) -> str:
    proc = k.run(*args, check=False)
    assert proc.returncode != 0, f"kasou {' '.join(args)} should have failed"
    assert "Traceback" not in proc.stderr
    return proc.stderr


def template(k: Kasou, name: str) -> None:
    k.run("volume", "create", name, "--size", "32M")
    path = k.json("volume", "show", name)["path"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {TEMPLATE} 0 1M", path],
                   check=True, capture_output=True)
    k.run("volume", "template", name)


def disk_holds(k: Kasou, vm: str, pattern: int) -> bool:
    """The first MiB of the desktop's disk, as QEMU would read it, is all `pattern`."""
    path = k.json("volume", "show", f"{vm}-disk")["path"]
    proc = subprocess.run(["qemu-io", "-r", "-U", "-f", "qcow2", "-c",
                           f"read -P {pattern} 0 1M", path], capture_output=True, text=True)
    return proc.returncode == 0 and "Pattern verification failed" not in proc.stdout


def desktops(k: Kasou, pool: str) -> dict[str, dict[str, Any]]:
    return {d["vm"]: d for d in k.json("desktop-pool", "show", pool)["desktops"]}


def scribble(k: Kasou, vm: str) -> None:
    """The desktop's user changes its disk (from inside the guest)."""
    mark = chr(MARK)
    out = sh(k.vm(vm), f"head -c 512 /dev/zero | tr '\\0' {mark} | dd of=/dev/vda bs=512 "
                       "conv=fsync 2>/dev/null; dd if=/dev/vda bs=4 count=1 2>/dev/null | "
                       "od -An -tx1")
    assert out.split() == [f"{MARK:02x}"] * 4
    assert not disk_holds(k, vm, TEMPLATE)


def test_pool_assign_refusals_and_reset_on_return(kasou: Kasou) -> None:
    k = kasou
    template(k, "base")
    for user in ("alice", "bob"):
        k.run("user", "create", user)
    pool = k.json("desktop-pool", "create", "lab", "--from", "base", "--size", "2",
                  "--image", "tiny")
    assert [(d["vm"], d["state"], d["user"]) for d in pool["desktops"]] == \
        [("lab-1", "stopped", None), ("lab-2", "stopped", None)]
    assert {v["volume"] for v in (k.json("vm", "disk", "list", "lab-1") +
                                  k.json("vm", "disk", "list", "lab-2"))} == \
        {"lab-1-disk", "lab-2-disk"}

    out = k.run("desktop-pool", "assign", "lab", "alice", "--base", "http://h:1").stdout
    assert "alice has desktop lab-1" in out
    assert "http://h:1/ui/console.html?vm=lab-1#token=" in out
    vm = k.vm("lab-1")
    assert vm["state"] == "running" and vm["extras"]["desktop"] == \
        {"pool": "lab", "index": 1, "user": "alice"}
    wait_serial(vm, r"KASOU READY lab-1", timeout=180)

    assert "'alice' already has desktop lab-1" in error_of(k, "desktop-pool", "assign",
                                                             "lab", "alice")
    assert "no user named 'carol'" in error_of(k, "desktop-pool", "assign", "lab", "carol")
    assert "is a desktop of a pool" in error_of(k, "vm", "delete", "lab-2")
    before = [v["name"] for v in k.json("vm", "list")]
    big = error_of(k, "desktop-pool", "create", "huge", "--from", "base", "--size", "900",
                   "--image", "tiny")
    assert "does not fit this host" in big and "900 desktops" in big
    assert [v["name"] for v in k.json("vm", "list")] == before      # nothing made

    # shrink: the free desktop goes, the assigned one cannot
    assert [d["vm"] for d in k.json("desktop-pool", "resize", "lab", "1")["desktops"]] == \
        ["lab-1"]
    assert "(alice)" in error_of(k, "desktop-pool", "resize", "lab", "0")
    assert "no free desktop: all 1 are assigned" in error_of(k, "desktop-pool", "assign",
                                                               "lab", "bob")
    assert "lab-2-disk" not in {v["name"] for v in k.json("volume", "list")}

    scribble(k, "lab-1")
    assert "assigned desktops (alice)" in error_of(k, "desktop-pool", "delete", "lab")
    k.run("desktop-pool", "return", "lab", "alice")
    back = desktops(k, "lab")["lab-1"]
    assert back["user"] is None and back["state"] == "stopped"
    assert disk_holds(k, "lab-1", TEMPLATE)           # a fresh clone of the template

    # the next user gets the reset desktop; growing makes another from the template
    k.run("desktop-pool", "assign", "lab", "bob")
    grown = k.json("desktop-pool", "resize", "lab", "2")
    assert [(d["vm"], d["user"]) for d in grown["desktops"]] == [("lab-1", "bob"),
                                                                 ("lab-2", None)]
    assert disk_holds(k, "lab-2", TEMPLATE)
    k.run("desktop-pool", "delete", "lab", "--force")
    assert k.json("vm", "list") == []
    assert {v["name"] for v in k.json("volume", "list")} == {"base"}


def test_keep_policy_and_assignments_across_a_daemon_restart(kasou: Kasou) -> None:
    k = kasou
    template(k, "base")
    k.run("user", "create", "alice")
    k.run("desktop-pool", "create", "studio", "--from", "base", "--size", "1",
          "--image", "tiny", "--policy", "keep")
    k.run("desktop-pool", "assign", "studio", "alice")
    wait_serial(k.vm("studio-1"), r"KASOU READY studio-1", timeout=180)
    k.stop_daemon()                 # assignments persist; the desktop outlives the daemon
    k.start_daemon()
    held = desktops(k, "studio")["studio-1"]
    assert held["user"] == "alice" and held["state"] == "running"
    scribble(k, "studio-1")
    k.run("desktop-pool", "return", "studio", "alice")
    kept = desktops(k, "studio")["studio-1"]
    assert kept["user"] is None and kept["state"] == "running"
    assert not disk_holds(k, "studio-1", TEMPLATE)
    wait_for(lambda: k.vm("studio-1")["state"] == "running", 5, "the kept desktop to run on")
