"""The built images boot under plain QEMU (not kasou), as kasou will run them.

Builds `tiny` and `memtest` into the default image cache (once; later runs reuse them),
then boots them with TCG on the machine types kasou uses and checks what the manifests
promise: the READY line with the hostname, the ACPI power button, poweroff/reboot from the
guest shell, virtio devices, and memtest86+ on the serial port.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kasou.images.manifest import ImageManifest
from kasou.images.registry import build_image

pytestmark = pytest.mark.integration

QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT_S = 90      # TCG on a loaded 2-core host; a quiet host boots tiny in ≈ 3 s
STOP_TIMEOUT_S = 20


def host_tsc_khz() -> int | None:
    """The host TSC frequency, which microvm guests under TCG need to be told."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"tsc: Detected (\d+)\.(\d{3}) MHz", log)
        if m:
            return int(m.group(1)) * 1000 + int(m.group(2))
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    return round(float(m.group(1)) * 1000) if m else None


def machine_argv(machine: str) -> list[str]:
    # The same machine options kasou's engine uses.
    if machine == "microvm":
        return ["-machine", "microvm,acpi=on,x-option-roms=off,pit=off,pic=off,rtc=on"]
    return ["-machine", f"{machine},usb=off,vmport=off"]


def cmdline(image: ImageManifest, machine: str, hostname: str) -> str:
    """The image's command line plus what kasou's engine appends for the machine type."""
    words = [image.cmdline or "", f"kasou.hostname={hostname}"]
    if machine == "microvm":
        tsc = host_tsc_khz()
        if tsc:
            words += [f"tsc_early_khz={tsc}", "tsc=reliable"]
    else:
        words.append("no_timer_check")
    return " ".join(w for w in words if w)


def virtio(machine: str, kind: str) -> str:
    return f"virtio-{kind}-device" if machine == "microvm" else f"virtio-{kind}-pci"


class Guest:
    """One plain QEMU process: serial console on a pipe, QMP on a Unix socket."""

    def __init__(self, image: ImageManifest, machine: str, *, hostname: str = "guest",
                 memory_mib: int = 256, extra: tuple[str, ...] = (),
                 no_reboot: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kasou-img-"))  # short: sun_path limit
        self.qmp_path = self.dir / "qmp.sock"
        argv = [QEMU, *machine_argv(machine), "-accel", "tcg,thread=multi",
                "-cpu", "qemu64,+arat", "-m", str(memory_mib), "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        assert image.kernel
        argv += ["-kernel", image.kernel, "-append", cmdline(image, machine, hostname)]
        if image.initrd:
            argv += ["-initrd", image.initrd]
        if no_reboot:
            argv.append("-no-reboot")
        self.argv = argv + list(extra)
        self.output = bytearray()
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self._lock:
                self.output += chunk

    @property
    def text(self) -> str:
        with self._lock:
            return self.output.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = BOOT_TIMEOUT_S,
                 since: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern).search(self.text, since)
            if m:
                return m
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader drain the pipe
                m = re.compile(pattern).search(self.text, since)
                if m:
                    return m
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before "
                                     f"{pattern!r}:\n{self.text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.text[-3000:]}")

    def wait_ready(self, image: ImageManifest) -> float:
        assert image.ready_line
        # A whole line: the regex could otherwise match a half-printed hostname.
        self.wait_for(image.ready_line + r"\r?\n")
        return time.monotonic() - self.started

    def type(self, line: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def run(self, command: str, timeout: float = 60) -> str:
        """Run a shell command on the serial console; returns its output."""
        token = int(time.monotonic() * 1000) % 1000000
        start = len(self.text)
        # The console echoes the typed line with "$((x+1))" in it; only the shell's
        # output has the computed numbers, so the markers cannot match the echo.
        self.type(f"echo :BEGIN$(({token}+1)); {command}; echo :END$(({token}+2))")
        begin = self.wait_for(rf":BEGIN{token + 1}\r?\n", timeout, since=start)
        end = self.wait_for(rf":END{token + 2}\r?\n", timeout, since=begin.end())
        return self.text[begin.end(): end.start()]

    def qmp(self, command: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            return self._qmp_exchange(sock, command)

    @staticmethod
    def _qmp_exchange(sock: socket.socket, command: str) -> dict[str, Any]:
        with sock.makefile("rwb") as stream:
            json.loads(stream.readline())  # greeting
            reply: dict[str, Any] = {}
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}).encode() + b"\n")
                stream.flush()
                while "return" not in (reply := json.loads(stream.readline())) \
                        and "error" not in reply:
                    pass  # an asynchronous event
            return reply

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"QEMU still running {timeout} s later:\n"
                                 f"{self.text[-3000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                with contextlib.suppress(OSError):
                    stream.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def images() -> dict[str, ImageManifest]:
    return {name: build_image(name) for name in ("tiny", "memtest")}


@pytest.fixture()
def boot(images: dict[str, ImageManifest]) -> Iterator[Any]:
    guests: list[Guest] = []

    def start(name: str, machine: str, **kwargs: Any) -> Guest:
        guest = Guest(images[name], machine, **kwargs)
        guests.append(guest)
        return guest

    try:
        yield start
    finally:
        for guest in guests:  # never leave a QEMU behind, whatever happened
            guest.close()


MACHINES = ["microvm", "pc"]


@pytest.mark.parametrize("machine", [*MACHINES, "q35"])
def test_tiny_boots_to_ready_and_stops_on_the_acpi_power_button(
        boot: Any, images: dict[str, ImageManifest], machine: str) -> None:
    tiny = images["tiny"]
    guest: Guest = boot("tiny", machine, hostname=f"kt-{machine}")
    seconds = guest.wait_ready(tiny)
    print(f"tiny on {machine}: READY after {seconds:.2f} s")
    assert re.search(rf"^KASOU READY kt-{machine}\r?$", guest.text, re.MULTILINE)

    assert guest.qmp("system_powerdown") == {"return": {}}
    stopped = time.monotonic()
    assert guest.wait_exit() == 0
    print(f"tiny on {machine}: QEMU exited {time.monotonic() - stopped:.2f} s after "
          "system_powerdown")
    assert "Requesting system poweroff" in guest.text  # the guest's init shut it down
    assert guest.text.count("KASOU READY") == 1


@pytest.mark.parametrize("machine", MACHINES)
def test_tiny_shell_devices_and_dhcp(tmp_path: Path, boot: Any,
                                     images: dict[str, ImageManifest], machine: str) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"kasou-disk".ljust(1 << 20, b"\0"))
    extra = ("-netdev", "user,id=n0", "-device", f"{virtio(machine, 'net')},netdev=n0",
             "-drive", f"file={disk},format=raw,if=none,id=d0",
             "-device", f"{virtio(machine, 'blk')},drive=d0",
             "-device", virtio(machine, "rng"), "-device", virtio(machine, "balloon"))
    guest: Guest = boot("tiny", machine, hostname="shell-test", extra=extra)
    guest.wait_ready(images["tiny"])

    assert guest.run("hostname").strip() == "shell-test"
    assert guest.run("id -u").strip() == "0"
    assert guest.run("head -c 10 /dev/vda").strip() == "kasou-disk"
    modules = guest.run("lsmod")
    for name in ("virtio_net", "virtio_blk", "virtio_rng", "virtio_balloon", "button", "evdev"):
        assert re.search(rf"^{name}\s", modules, re.MULTILINE), f"{name} not loaded"
    # DHCP runs in the background: give QEMU's user network a few seconds to answer.
    addr = guest.run("for i in $(seq 100); do ip -4 addr show eth0 | grep -q inet && break;"
                     " sleep 0.2; done; ip -4 addr show eth0; ip route; cat /etc/resolv.conf")
    assert "inet 10.0.2.15/24" in addr
    assert "default via 10.0.2.2" in addr
    assert "nameserver 10.0.2.3" in addr


@pytest.mark.parametrize("command", ["poweroff", "reboot"])
@pytest.mark.parametrize("machine", MACHINES)
def test_tiny_poweroff_and_reboot_from_the_guest_shell(
        boot: Any, images: dict[str, ImageManifest], machine: str, command: str) -> None:
    guest: Guest = boot("tiny", machine)  # -no-reboot: a reboot also ends QEMU
    guest.wait_ready(images["tiny"])
    guest.type(command)
    assert guest.wait_exit() == 0
    assert f"Requesting system {command}" in guest.text


@pytest.mark.parametrize("machine", MACHINES)
def test_tiny_reboot_comes_back_up(boot: Any, images: dict[str, ImageManifest],
                                   machine: str) -> None:
    tiny = images["tiny"]
    guest: Guest = boot("tiny", machine, no_reboot=False)
    guest.wait_ready(tiny)
    mark = len(guest.text)
    guest.type("reboot")
    guest.wait_for(r"KASOU READY guest\r?\n", since=mark)
    assert guest.proc.poll() is None
    assert guest.qmp("system_powerdown") == {"return": {}}
    assert guest.wait_exit() == 0


def test_memtest_prints_on_the_serial_console(boot: Any,
                                              images: dict[str, ImageManifest]) -> None:
    memtest = images["memtest"]
    assert memtest.machine == "pc" and not memtest.graceful_stop
    # ≤ 144 MiB: with more, memtest86+ benchmarks memory for ≈ 12 s under TCG before drawing.
    guest: Guest = boot("memtest", memtest.machine, memory_mib=128)
    assert memtest.ready_line
    guest.wait_for(memtest.ready_line)
    print(f"memtest: ready line after {time.monotonic() - guest.started:.2f} s")
    guest.wait_for(r"Memory\s*:\s*12\dMB")  # it found the memory QEMU gave it


def read_newc(data: bytes) -> dict[str, tuple[int, int, int]]:
    """path -> (mode, uid, gid) of a cpio newc archive."""
    out: dict[str, tuple[int, int, int]] = {}
    pos = 0
    while data[pos:pos + 6] == b"070701":
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        name = data[pos + 110: pos + 110 + f[11] - 1].decode()
        pos += 110 + f[11]
        pos += -pos % 4
        pos += f[6] + (-f[6] % 4)
        if name == "TRAILER!!!":
            break
        out[name] = (f[1], f[2], f[3])
    return out


def test_built_images_are_cached_and_complete(images: dict[str, ImageManifest]) -> None:
    tiny = images["tiny"]
    assert build_image("tiny") == tiny  # cached: same manifest, same built_at
    assert tiny.machine == "microvm" and tiny.graceful_stop
    assert any(p.startswith("linux-image-") and p.endswith("-cloud-amd64") for p in tiny.sources)
    assert "busybox-static" in tiny.sources
    assert tiny.initrd
    initrd = Path(tiny.initrd)
    assert initrd.stat().st_size < 4 << 20, "the initramfs should stay small"
    entries = read_newc(gzip.decompress(initrd.read_bytes()))
    assert all(uid == 0 and gid == 0 for _, uid, gid in entries.values())
    for path in ("init", "bin/busybox", "sbin/acpid", "etc/inittab", "dev/console",
                 "etc/acpi/PWRF/00000080", "etc/kasou/modules"):
        assert path in entries, path
    kver = re.search(r"Debian (\S+) ", tiny.os)
    assert kver
    assert f"lib/modules/{kver.group(1)}/modules.dep" in entries
    memtest = images["memtest"]
    assert memtest.kernel and Path(memtest.kernel).is_file()
    assert memtest.os.startswith("memtest86+ ")
