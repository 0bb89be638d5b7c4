"""Storage figures for `make bench` (bench/run.py calls run()).

1. A VM's own disk from a template: `kasou vm create --from` (a qcow2 overlay, linked
   clone) against `--full-clone` (a copy), through the CLI and through the API alone, with
   plain `qemu-img create -b` / `qemu-img convert` on the same template as the baseline.
2. Restore from suspend against a cold boot, to the same ready point: from asking the
   daemon to start the VM to the guest's shell answering a command on the serial console.
   Target: restore <= 0.2x cold boot. Plain QEMU (the same command line, saved and
   restored with the same fd migration, no daemon) is measured in the same run.

Figures, not assertions: nothing here fails on a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.cli.client import Client  # noqa: E402
from kasou.images.registry import build_image  # noqa: E402
from kasou.paths import Layout  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
TEMPLATE_GIB = 2
TEMPLATE_DATA_MIB = int(os.environ.get("BENCH_TEMPLATE_MIB", "512"))
READY = re.compile(rb"KASOU READY")


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("kasou")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kasou"]


class Daemon:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="kasou-bench-storage-"))
        self.env = {**os.environ, "KASOU_HOME": str(self.home)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = Client(Layout(self.home))

    def run(self, *args: str) -> str:
        return subprocess.run([*_cli(), *args], env=self.env, check=True, capture_output=True,
                              text=True).stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    def start(self) -> None:
        log = open(self.home / "kasoud.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([*_cli(), "serve"], env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        for _ in range(300):
            if (self.home / "kasou.sock").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    self.run("vm", "list")
                    return
            time.sleep(0.1)
        raise SystemExit("daemon did not start")

    def close(self) -> None:
        for rt in self.home.glob("vms/*/runtime.json"):
            with contextlib.suppress(ProcessLookupError, KeyError, ValueError):
                os.kill(json.loads(rt.read_text())["pid"], signal.SIGKILL)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        shutil.rmtree(self.home, ignore_errors=True)


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.monotonic()
    fn(*args)
    return time.monotonic() - t0


# -- 1. clones -------------------------------------------------------------------------------
def clones(d: Daemon) -> dict[str, Any]:
    d.run("volume", "create", "tpl", "--size", f"{TEMPLATE_GIB}G")
    tpl = d.json("volume", "show", "tpl")["path"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0xa5 0 {TEMPLATE_DATA_MIB}M",
                    tpl], check=True, capture_output=True)
    d.run("volume", "template", "tpl")
    out: dict[str, list[float]] = {k: [] for k in ("cli_linked", "cli_full", "api_linked",
                                                   "api_full", "plain_linked", "plain_full")}
    scratch = Path(tempfile.mkdtemp(prefix="kasou-bench-img-"))
    try:
        for i in range(RUNS):
            base = ["vm", "create", "--image", "tiny", "--from", "tpl"]
            out["cli_linked"].append(_timed(d.run, *base[:2], f"cl{i}", *base[2:]))
            out["cli_full"].append(_timed(d.run, *base[:2], f"cf{i}", *base[2:],
                                          "--full-clone"))
            spec = {"image": "tiny", "template": "tpl"}
            out["api_linked"].append(_timed(d.api.post, "/vms", {"name": f"al{i}", **spec}))
            out["api_full"].append(_timed(d.api.post, "/vms", {"name": f"af{i}", **spec,
                                                               "full_clone": True}))
            out["plain_linked"].append(_timed(_img, "create", "-q", "-f", "qcow2", "-b", tpl,
                                              "-F", "qcow2", str(scratch / f"l{i}.qcow2")))
            out["plain_full"].append(_timed(_img, "convert", "-f", "qcow2", "-O", "qcow2", tpl,
                                            str(scratch / f"f{i}.qcow2")))
            for name in (f"cl{i}", f"cf{i}", f"al{i}", f"af{i}"):
                d.run("vm", "delete", name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {k: _med(v) for k, v in out.items()} | {"runs": out}


def _img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


# -- 2. restore vs cold boot -----------------------------------------------------------------
def answer(console: str, timeout: float = 120) -> float:
    """Send a command until the guest's shell echoes its result; the time it answered."""
    tag = uuid.uuid4().hex[:6]
    want = f"{tag}-{7 * 6}".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(console)
            s.settimeout(0.02)
            s.sendall(f"echo {tag}-$((7*6))\n".encode())
            got = b""
            until = time.monotonic() + 2
            while time.monotonic() < until:
                with contextlib.suppress(TimeoutError):
                    got += s.recv(65536)
                if want in got:
                    return time.monotonic()
        time.sleep(0.005)
    raise SystemExit("the guest never answered on its console")


def wait_ready(log: Path, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if len(READY.findall(log.read_bytes())) >= count:
                return
        time.sleep(0.005)
    raise SystemExit(f"no KASOU READY in {log}")


def restores(d: Daemon) -> dict[str, Any]:
    d.run("vm", "create", "r", "--image", "tiny", "--disk-size", "256M")
    vm_dir = d.home / "vms" / str(d.json("vm", "show", "r")["id"])
    console, log = str(vm_dir / "console.sock"), vm_dir / "serial.log"
    cold, warm, cli_warm, save, size = [], [], [], [], 0
    argv: list[str] = []
    for i in range(RUNS):
        t0 = time.monotonic()
        d.api.post("/vms/r/start")
        wait_ready(log, i + 1)
        cold.append(answer(console) - t0)
        argv = json.loads((vm_dir / "runtime.json").read_text())["argv"]
        save.append(_timed(d.api.post, "/vms/r/suspend"))
        size = int(d.json("vm", "show", "r")["extras"]["storage"]["saved_state"]["size"])
        t0 = time.monotonic()
        d.api.post("/vms/r/start")
        warm.append(answer(console) - t0)
        d.api.post("/vms/r/suspend")
        t0 = time.monotonic()
        d.run("vm", "start", "r")
        cli_warm.append(answer(console) - t0)
        d.api.post("/vms/r/kill")
    plain = asyncio.run(_plain(argv, str(vm_dir)))
    return {"cold": cold, "warm": warm, "cli_warm": cli_warm, "save": save, "size": size,
            "plain_cold": plain[0], "plain_warm": plain[1]}


async def _plain(argv: list[str], vm_dir: str) -> tuple[list[float], list[float]]:
    """The same command line without kasou: boot, save through an fd, restore."""
    from qemu.qmp import QMPClient

    cold, warm = [], []
    for _ in range(RUNS):
        scratch = tempfile.mkdtemp(prefix="plainqemu-")
        args = [a.replace(vm_dir, scratch) for a in argv]
        console, state = f"{scratch}/console.sock", f"{scratch}/memory.state"
        t0 = time.monotonic()
        subprocess.run(args, check=True, capture_output=True)
        wait_ready(Path(scratch) / "serial.log", 1)
        cold.append(answer(console) - t0)
        qmp = QMPClient("bench")
        await qmp.connect(f"{scratch}/qmp.sock")
        await qmp.execute("stop")
        await qmp.execute("migrate-set-parameters", {"max-bandwidth": 64 << 30})
        fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": "save"})
        os.close(fd)
        await qmp.execute("migrate", {"uri": "fd:save"})
        while (await qmp.execute("query-migrate")).get("status") != "completed":
            await asyncio.sleep(0.01)
        await _quit(qmp)
        _wait_gone(Path(scratch) / "pid")
        t0 = time.monotonic()
        subprocess.run([*args, "-incoming", "defer"], check=True, capture_output=True)
        qmp = QMPClient("bench")
        await qmp.connect(f"{scratch}/qmp.sock")
        fd = os.open(state, os.O_RDONLY)
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": "restore"})
        os.close(fd)
        await qmp.execute("migrate-incoming", {"uri": "fd:restore"})
        while (await qmp.execute("query-status"))["status"] == "inmigrate":
            await asyncio.sleep(0.01)
        await qmp.execute("cont")
        warm.append(answer(console) - t0)
        await _quit(qmp)
        _wait_gone(Path(scratch) / "pid")
        shutil.rmtree(scratch, ignore_errors=True)
    return cold, warm


async def _quit(qmp: Any) -> None:
    # The monitor closes as QEMU exits: the reply and the disconnect may both fail.
    with contextlib.suppress(Exception):
        await qmp.execute("quit")
    with contextlib.suppress(Exception):
        await qmp.disconnect()


def _wait_gone(pidfile: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        pid = int(pidfile.read_text())
        for _ in range(500):
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)


# -- report ----------------------------------------------------------------------------------
def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def report(c: dict[str, Any], r: dict[str, Any]) -> str:
    cold, warm = _med(r["cold"]), _med(r["warm"])
    pcold, pwarm = _med(r["plain_cold"]), _med(r["plain_warm"])
    return "\n".join([
        "## Storage", "",
        f"### A VM's own disk from a template ({TEMPLATE_GIB} GiB qcow2 template holding "
        f"{TEMPLATE_DATA_MIB} MiB of data)", "",
        "`kasou vm create NAME --image tiny --from tpl` (linked clone: a qcow2 overlay) "
        "against `--full-clone` (a copy), through the CLI (a new process each time) and "
        "through the API alone (POST /vms); plain qemu-img on the same template as the "
        f"baseline. Medians of {RUNS} runs.", "",
        "| | linked clone (s) | full copy (s) | full / linked |", "|---|---|---|---|",
        f"| `kasou vm create` (CLI) | {c['cli_linked']:.3f} | {c['cli_full']:.3f} | "
        f"{c['cli_full'] / c['cli_linked']:.1f}x |",
        f"| POST /vms (API) | {c['api_linked']:.3f} | {c['api_full']:.3f} | "
        f"{c['api_full'] / c['api_linked']:.1f}x |",
        f"| plain `qemu-img create -b` / `convert` | {c['plain_linked']:.3f} | "
        f"{c['plain_full']:.3f} | {c['plain_full'] / c['plain_linked']:.1f}x |", "",
        "### Restore from suspend against a cold boot (tiny guest, 256 MiB, 256 MiB disk)", "",
        "From asking the daemon to start the VM (POST /vms/NAME/start) to the guest's shell "
        "answering `echo` on the serial console; the cold boot waits for `KASOU READY` "
        f"first. Plain QEMU: the same command line, saved and restored through the same "
        f"fd migration, no daemon. Medians of {RUNS} runs. Target: restore <= 0.2x cold boot.",
        "", "| | cold boot (s) | restore (s) | restore / cold |", "|---|---|---|---|",
        f"| kasou (API) | {cold:.3f} | {warm:.3f} | {warm / cold:.3f} |",
        f"| plain QEMU | {pcold:.3f} | {pwarm:.3f} | {pwarm / pcold:.3f} |", "",
        f"kasou runs: cold {_runs(r['cold'])}; restore {_runs(r['warm'])}; restore through "
        f"the CLI (`kasou vm start`, a new process) {_runs(r['cli_warm'])} (median "
        f"{_med(r['cli_warm']):.3f}). Plain runs: cold {_runs(r['plain_cold'])}; restore "
        f"{_runs(r['plain_warm'])}.", "",
        f"`kasou vm suspend` (API): median {_med(r['save']):.3f} s, saved state "
        f"{r['size'] / (1 << 20):.0f} MiB.", "",
    ])


def run() -> str:
    build_image("tiny")
    d = Daemon()
    try:
        d.start()
        c = clones(d)
        print(f"clones: {c}", flush=True)
        r = restores(d)
        print(f"restores: { {k: v for k, v in r.items()} }", flush=True)
    finally:
        d.close()
    return report(c, r)


if __name__ == "__main__":
    print(run())
