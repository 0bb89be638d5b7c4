"""A private network world for network tests, all on this machine.

    "outside" netns  (198.51.100.1, the test's servers)
        │ veth
    daemon netns     (198.51.100.2, default route to outside): kasou's daemon, its bridges,
                     dnsmasq, nftables and QEMU (QEMU inherits the daemon's netns)

Nothing can reach a real network: the daemon's netns has no interface but the veth to a
netns that has no other interface either. Deleting the two netns at the end removes every
interface and rule left behind; the test checks kasou's own cleanup before that.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.integration.conftest import wait_serial

OUTSIDE_IP = "198.51.100.1"     # TEST-NET-2: documentation range, lives only in our netns
UPLINK_IP = "198.51.100.2"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=60)


class NetEnv:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = f"kt-{tag}"
        self.outside = f"ko-{tag}"
        self.procs: list[subprocess.Popen[str]] = []

    def create(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "netns", "add", self.outside)
        for ns in (self.ns, self.outside):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
           "netns", self.outside)
        sh("ip", "-n", self.ns, "addr", "add", f"{UPLINK_IP}/24", "dev", "up0")
        sh("ip", "-n", self.outside, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "up1")
        sh("ip", "-n", self.ns, "link", "set", "up0", "up")
        sh("ip", "-n", self.outside, "link", "set", "up1", "up")
        sh("ip", "-n", self.ns, "route", "add", "default", "via", OUTSIDE_IP)

    def exec(self, *args: str, ns: str | None = None) -> list[str]:
        return ["ip", "netns", "exec", ns or self.ns, *args]

    def run(self, *args: str, ns: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec(*args, ns=ns), check=check)

    def spawn(self, code: str, *, ns: str | None = None) -> subprocess.Popen[str]:
        """A Python helper in a netns; its stdout is line-buffered for the test to read."""
        proc = subprocess.Popen(self.exec(sys.executable, "-u", "-c", code, ns=ns),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if "READY" not in line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"helper did not start: {line} {err}")
        return proc

    def links(self) -> list[str]:
        out = json.loads(self.run("ip", "-j", "link", "show").stdout)
        return sorted(str(link["ifname"]) for link in out)

    def nft_tables(self) -> list[str]:
        out = json.loads(self.run("nft", "-j", "list", "tables").stdout)
        return sorted(f"{t['table']['family']} {t['table']['name']}"
                      for t in out["nftables"] if "table" in t)

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.ns, check=False).stdout
        return [int(p) for p in out.split()]

    def sysctl(self, path: str) -> str:
        return self.run("cat", f"/proc/sys/{path}").stdout.strip()

    def destroy(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.communicate(timeout=5)
        # Whatever still runs in the test's own netns was started for it (dnsmasq, QEMU).
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for ns in (self.ns, self.outside):
            sh("ip", "netns", "del", ns, check=False)


HTTP_SERVER = """
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from outside, you are {self.client_address[0]}\\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("ADDR", PORT), H)
print("READY", flush=True)
srv.serve_forever()
"""

UDP_LISTENER = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("ADDR", PORT))
print("READY", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    print(f"FROM {peer[0]}", flush=True)
"""


def http_get(host: str, port: int) -> str:
    """A guest command fetching / over HTTP/1.0 with busybox nc (busybox-static's wget
    crashes in the tiny guest). Fails when no connection is made within 3 s."""
    return f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"


def http_server(env: NetEnv, addr: str, port: int, ns: str) -> subprocess.Popen[str]:
    return env.spawn(HTTP_SERVER.replace('"ADDR"', repr(addr)).replace("PORT", str(port)),
                     ns=ns)


def udp_listener(env: NetEnv, addr: str, port: int) -> subprocess.Popen[str]:
    return env.spawn(UDP_LISTENER.replace('"ADDR"', repr(addr)).replace("PORT", str(port)))


def read_lines(proc: subprocess.Popen[str], seconds: float) -> list[str]:
    """What a helper printed within `seconds` (non-blocking reads on its pipe)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            lines.append(line.strip())
        else:
            time.sleep(0.05)
    return lines


_tags = itertools.count(1)
_shells: set[str] = set()


def _await_shell(path: str, timeout: float = 60) -> None:
    """Until the guest's shell answers. Typed too early (while the shell starts and asks the
    terminal for its size), a command can be swallowed; a probe is safe to repeat."""
    tag = f"{os.getpid()}p{next(_tags)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.settimeout(0.2)
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s.sendall(f'echo "KPRO""BE{tag}"\n'.encode())
            resend = time.monotonic() + 3
            while time.monotonic() < resend:
                with contextlib.suppress(TimeoutError):
                    out += s.recv(65536)
                if f"KPROBE{tag}".encode() in out:
                    _shells.add(path)
                    return
    raise AssertionError(f"the shell on {path} never answered")


def guest(vm: dict[str, Any], command: str, timeout: float = 60) -> tuple[str, int]:
    """Run a shell command on the guest's serial console; (output, exit status).

    The end marker is typed with empty quotes inside it, so the console's echo of the
    command line never looks like the marker itself.
    """
    if str(vm["console"]) not in _shells:
        _await_shell(str(vm["console"]))
    tag = f"{os.getpid()}x{next(_tags)}"
    marker = f"KDONE{tag}="
    out = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(vm["console"]))
        s.settimeout(0.2)
        s.sendall(f'{command}; echo "KDO""NE{tag}=$?"\n'.encode())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and marker.encode() not in out:
            try:
                out += s.recv(65536)
            except TimeoutError:
                continue
        with contextlib.suppress(TimeoutError):
            out += s.recv(65536)
    text = out.decode(errors="replace").replace("\r", "")
    if marker not in text:
        raise AssertionError(f"no answer from {vm['name']} to {command!r}: {text[-2000:]!r}")
    before, _, after = text.rpartition(marker)
    status = int("".join(itertools.takewhile(str.isdigit, after)) or "1")
    # Drop the echoed command line: everything up to the first newline after it.
    echoed = f'KDO""NE{tag}=$?"'
    if echoed in before:
        before = before.split(echoed, 1)[1].split("\n", 1)[-1]
    return before, status


def ok(vm: dict[str, Any], command: str, timeout: float = 60) -> str:
    out, status = guest(vm, command, timeout)
    assert status == 0, f"{vm['name']}: {command!r} failed ({status}): {out}"
    return out


def fails(vm: dict[str, Any], command: str, timeout: float = 60) -> str:
    out, status = guest(vm, command, timeout)
    assert status != 0, f"{vm['name']}: {command!r} should have failed: {out}"
    return out


def wait_ip(vm: dict[str, Any], ip: str, timeout: float = 60) -> None:
    """Until the guest's DHCP client has put the reserved address on eth0."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out, _ = guest(vm, "ip -4 addr show dev eth0")
        if f"inet {ip}/" in out:
            return
        time.sleep(0.5)
    raise AssertionError(f"{vm['name']} never got {ip} by DHCP")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def home_dirs(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "networks").glob("*")) if (home / "networks").exists() \
        else []


def boot_all(k: Any, *vms: tuple[str, ...], timeout: float = 180) -> list[dict[str, Any]]:
    """Create and start every VM first, then wait for each READY line: the boots overlap."""
    for name, *args in vms:
        k.run("vm", "create", name, "--image", "tiny", *args)
        k.run("vm", "start", name)
    out = []
    for name, *_ in vms:
        vm = k.vm(name)
        wait_serial(vm, rf"KASOU READY {re.escape(name)}\b", timeout)
        out.append(vm)
    return out
