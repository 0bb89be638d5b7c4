"""Real guests through the real CLI and daemon: many at once, lifecycle, restart, crash."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Kasou, booted, serial_text, wait_for, wait_serial


def console_roundtrip(vm: dict[str, object], command: str, expect: str,
                      timeout: float = 30) -> re.Match[str]:
    """Type a command on the VM's serial console; wait for output matching regex `expect`.

    The terminal echoes the command line back, so `expect` must match the command's output
    and not its text (e.g. expect 'N=42' for the command 'echo N=$((40+2))')."""
    out = b""
    regex = re.compile(expect)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(vm["console"]))
        s.settimeout(0.5)
        s.sendall(command.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(out.decode(errors="replace"))
            if match:
                return match
            try:
                out += s.recv(65536)
            except TimeoutError:
                continue
    raise AssertionError(f"{expect!r} not in console output {out.decode(errors='replace')!r}")


def guest_uptime(vm: dict[str, object]) -> float:
    match = console_roundtrip(vm, "echo UP=$(cut -d' ' -f1 /proc/uptime)=", r"UP=([0-9.]+)=")
    return float(match.group(1))


def test_four_vms_of_two_operating_systems_run_at_once(kasou: Kasou) -> None:
    for name in ("lin1", "lin2", "lin3"):
        kasou.run("vm", "create", name, "--image", "tiny")
    kasou.run("vm", "create", "mem1", "--image", "memtest", "--memory", "128M")
    for name in ("lin1", "lin2", "lin3", "mem1"):
        kasou.run("vm", "start", name)
    vms = {v["name"]: v for v in kasou.json("vm", "list")}
    assert {v["state"] for v in vms.values()} == {"running"}
    pids = {v["pid"] for v in vms.values()}
    assert len(pids) == 4 and all(os.path.exists(f"/proc/{p}") for p in pids)
    for name in ("lin1", "lin2", "lin3"):
        wait_serial(vms[name], rf"KASOU READY {name}\b", 180)
    wait_serial(vms["mem1"], r"[Mm]emtest86\+", 180)
    # Each Linux guest answers on its own console, with its own hostname.
    for name in ("lin1", "lin2", "lin3"):
        console_roundtrip(vms[name], "echo I-AM-$(hostname)", rf"I-AM-{name}\b")
    # The memtest guest is a different OS: memtest86+'s own screen, no Linux shell.
    console_roundtrip(vms["lin1"], "echo OS-$(uname -s)", "OS-Linux")
    mem_text = serial_text(vms["mem1"])
    assert "KASOU READY" not in mem_text and "BusyBox" not in mem_text
    assert vms["mem1"]["os"].startswith("memtest86+") and vms["lin1"]["os"].startswith("linux")


def test_pause_resume_reboot_stop(kasou: Kasou) -> None:
    vm = booted(kasou, "life", "--image", "tiny")
    assert kasou.json("vm", "pause", "life")["state"] == "paused"
    # A paused guest does not answer on its console...
    with pytest.raises(AssertionError):
        console_roundtrip(vm, "echo P=$((6*7))", r"P=42", timeout=3)
    assert kasou.json("vm", "resume", "life")["state"] == "running"
    # ...and answers again once resumed.
    console_roundtrip(vm, "echo R=$((6*7))", r"R=42")

    assert kasou.json("vm", "reboot", "life")["state"] == "running"
    wait_serial(vm, r"KASOU READY life", 120, count=2)
    assert kasou.vm("life")["pid"] == vm["pid"]     # a reset, not a new process

    t0 = time.monotonic()
    stopped = kasou.json("vm", "stop", "life")
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    assert time.monotonic() - t0 < 25, "graceful stop fell back to the forced timeout"
    assert not os.path.exists(f"/proc/{vm['pid']}")
    assert stopped["reason"] is None


def test_refused_transitions_are_clear(kasou: Kasou) -> None:
    kasou.run("vm", "create", "idle", "--image", "tiny")
    r = kasou.run("vm", "pause", "idle", check=False)
    assert r.returncode == 1
    assert "cannot pause VM 'idle': it is stopped; pause needs running" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_force_stop_and_kill(kasou: Kasou) -> None:
    booted(kasou, "f1", "--image", "tiny")
    assert kasou.json("vm", "stop", "f1", "--force")["state"] == "stopped"
    kasou.run("vm", "start", "f1")
    killed = kasou.json("vm", "kill", "f1")
    assert killed["state"] == "stopped"


def test_guest_poweroff_is_noticed(kasou: Kasou) -> None:
    vm = booted(kasou, "self", "--image", "tiny")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(vm["console"])
        s.sendall(b"poweroff\n")
        wait_for(lambda: kasou.vm("self")["state"] == "stopped", 30, "guest poweroff")
    assert "guest shut down" in (kasou.vm("self")["reason"] or "")


def test_vms_outlive_a_killed_daemon(kasou: Kasou) -> None:
    vm = booted(kasou, "keep", "--image", "tiny")
    before = guest_uptime(vm)
    kasou.kill_daemon()
    assert os.path.exists(f"/proc/{vm['pid']}"), "killing the daemon killed the VM"
    time.sleep(1)
    kasou.start_daemon()
    again = kasou.vm("keep")
    assert again["state"] == "running" and again["pid"] == vm["pid"]
    after = guest_uptime(again)
    assert after > before + 0.5, "guest uptime did not grow: it was restarted"
    # still controllable through the new daemon
    assert kasou.json("vm", "pause", "keep")["state"] == "paused"
    assert kasou.json("vm", "resume", "keep")["state"] == "running"
    assert kasou.json("vm", "stop", "keep")["state"] == "stopped"


def test_qemu_crash_is_noticed_and_disk_untouched(kasou: Kasou, tmp_path: Path) -> None:
    disk = tmp_path / "data.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "8M"], check=True)
    disk.write_bytes(b"KASOU-DATA" + bytes(8 * 1024 * 1024 - 10))
    before = disk.read_bytes()
    vm = booted(kasou, "boom", "--image", "tiny", "--machine", "pc", "--disk", str(disk))
    os.kill(vm["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    crashed = wait_for(lambda: (v := kasou.vm("boom"))["state"] == "crashed" and v, 10,
                       "crash to be noticed")
    assert time.monotonic() - t0 < 3
    assert "exited unexpectedly" in crashed["reason"]
    assert disk.read_bytes() == before
    # a crashed VM starts again; deleting it leaves the user's disk alone
    kasou.run("vm", "start", "boom")
    kasou.run("vm", "kill", "boom")
    kasou.run("vm", "delete", "boom")
    assert disk.exists() and disk.read_bytes()[:10] == b"KASOU-DATA"
    assert kasou.run("vm", "show", "boom", check=False).returncode == 1


def test_cli_console_through_a_pipe(kasou: Kasou) -> None:
    booted(kasou, "pipe", "--image", "tiny")
    r = kasou.run("vm", "console", "pipe", input="echo VIA-CLI-$((40+2))\n", timeout=30)
    assert "VIA-CLI-42" in r.stdout
    logs = kasou.run("vm", "logs", "pipe").stdout
    assert "KASOU READY pipe" in logs and "VIA-CLI-42" in logs
