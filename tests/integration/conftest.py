"""Layered fixtures for real guests: images → daemon → VM defined → VM booted.

Every test gets its own data dir and daemon. On failure the serial logs and the daemon log
are copied to test-artifacts/<test name>/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kasou.images.registry import build_image

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def images() -> dict[str, Any]:
    """The demo guests, built from Debian packages once and cached."""
    return {name: build_image(name) for name in ("tiny", "memtest")}


class Kasou:
    """Runs the real `kasou` CLI against one data dir."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "KASOU_HOME": str(home)}
        self.env.pop("KASOU_URL", None)
        self.daemon: subprocess.Popen[bytes] | None = None
        # Wraps the daemon's command line, e.g. ["ip", "netns", "exec", NS] (network tests).
        self.prefix: list[str] = []

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "kasou", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"kasou {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def vm(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json("vm", "show", name)
        return data

    def start_daemon(self, *extra: str) -> None:
        with open(self.home / "kasoud.log", "ab") as log:   # the child keeps its own copy
            self.daemon = subprocess.Popen([*self.prefix, sys.executable, "-m", "kasou",
                                            "serve", *extra],
                                           env=self.env, stdout=log, stderr=log,
                                           start_new_session=True)
        sock = self.home / "kasou.sock"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited: {(self.home / 'kasoud.log').read_text()}")
            if sock.exists() and self.run("vm", "list", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("daemon did not come up")

    def kill_daemon(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait(10)

    def stop_daemon(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(5)

    def qemu_pids(self) -> list[int]:
        pids = []
        for rt in (self.home / "vms").glob("*/runtime.json"):
            with contextlib.suppress(Exception):
                pids.append(int(json.loads(rt.read_text())["pid"]))
        for pidfile in (self.home / "vms").glob("*/pid"):
            with contextlib.suppress(Exception):
                pids.append(int(pidfile.read_text()))
        return sorted(set(pids))

    def cleanup(self) -> None:
        self.stop_daemon()
        for pid in self.qemu_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def serial_text(vm: dict[str, Any]) -> str:
    try:
        return Path(vm["serial_log"]).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_serial(vm: dict[str, Any], pattern: str, timeout: float = 90, count: int = 1) -> str:
    regex = re.compile(pattern)

    def seen() -> str | None:
        text = serial_text(vm)
        return text if len(regex.findall(text)) >= count else None

    out: str = wait_for(seen, timeout, f"{pattern!r} x{count} on {vm['name']}'s serial console")
    return out


def sh(vm: dict[str, Any], command: str, timeout: float = 90) -> str:
    """Run a shell command on the guest's serial console; its output, and assert it exited
    0. The markers are typed split (BEG""IN) so the terminal's echo never matches."""
    tag = uuid.uuid4().hex[:8]
    line = f'echo {tag}-BEG""IN; {command}; echo {tag}-E""ND-$?'
    done = re.compile(rf"{tag}-END-(\d+)")
    out = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(vm["console"]))
        s.settimeout(0.5)
        s.sendall(line.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done.search(out.decode(errors="replace")):
            try:
                out += s.recv(65536)
            except TimeoutError:
                continue
    text = out.decode(errors="replace")
    end = done.search(text)
    assert end, f"no answer to {command!r} in {timeout}s: {text!r}"
    body = text[text.index(f"{tag}-BEGIN") + len(tag) + 6:end.start()]
    assert end.group(1) == "0", f"{command!r} failed ({end.group(1)}): {body!r}"
    return body.replace("\r", "").strip("\n")


@pytest.fixture(scope="module")
def shared_kasou(tmp_path_factory: pytest.TempPathFactory,
                 images: dict[str, Any]) -> Iterator[Kasou]:
    """One daemon for a module's tests that must leave nothing behind (refusals)."""
    k = Kasou(tmp_path_factory.mktemp("shared"))
    k.start_daemon()
    yield k
    k.cleanup()


@pytest.fixture
def kasou(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
          images: dict[str, Any]) -> Iterator[Kasou]:
    """A data dir with a running daemon; everything it started is ended afterwards."""
    home = tmp_path_factory.mktemp("home")
    k = Kasou(home)
    k.start_daemon()
    yield k
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        dest = ARTIFACTS / request.node.name
        dest.mkdir(parents=True, exist_ok=True)
        for log in home.glob("vms/*/serial.log"):
            shutil.copy(log, dest / f"{log.parent.name}-serial.log")
        with contextlib.suppress(FileNotFoundError):
            shutil.copy(home / "kasoud.log", dest / "kasoud.log")
    k.cleanup()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def booted(k: Kasou, name: str, *create_args: str, timeout: float = 120) -> dict[str, Any]:
    """Create and start a VM, and wait until the guest says it is ready."""
    k.run("vm", "create", name, *create_args)
    k.run("vm", "start", name)
    vm = k.vm(name)
    ready = {"tiny": r"KASOU READY " + re.escape(name), "memtest": r"Memtest86\+"}
    image = vm.get("image") or "tiny"
    wait_serial(vm, ready.get(image, "KASOU READY"), timeout)
    return vm
