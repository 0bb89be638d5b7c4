"""Desktop figures for `make bench` (bench/run.py calls run()).

In real headless Chromium (Debian's, through Playwright), with a tiny guest that has a
screen, kasou against a plain-QEMU baseline in the same run:
1. Console latency: from clicking "console" to the first frame drawn in the canvas. kasou:
   the dashboard's button (token request, WebSocket to the daemon, QMP add_client, RFB
   handshake, first update). Baseline: the same guest run by plain QEMU with the very
   command line kasou used, but `-vnc unix:SOCKET`, proxied by websockify, and a page of
   ours (served by websockify --web) that opens the same noVNC module, kasou's vendored
   copy, with the same options. Runs interleaved, kasou then baseline.
2. While the guest's screen scrolls (`yes` on tty1): frames per second the browser shows
   (canvas changes seen per animation frame) and the CPU the proxy (the daemon, or
   websockify and its per-connection child) and QEMU use, from /proc.
3. Desktop pools: creating a pool of 10 linked clones (VMs not started) against 10
   `qemu-img create -b TEMPLATE` overlays in a loop; from `desktop-pool assign` to the
   guest's KASOU READY line against `kasou vm start` of a same-spec VM; `return` with the
   reset policy (discard + fresh clone); deleting the pool.

Figures, not assertions: nothing here fails on a number.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.images.registry import build_image  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SCROLL_S = 10.0
POOL_SIZE = 10
# 10 one-vCPU desktops (plus the other test VMs) on 2 cores: over the default 4 vCPUs per
# core, which refuses a pool whose desktops could not all run at once. Same as run.py.
CPU_OVERCOMMIT = 12
NOVNC = ROOT / "kasou" / "web" / "vendor" / "novnc"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
FIRST_FRAME = """() => {
  const c = document.querySelector('#screen canvas');
  if (!c || !c.width || document.getElementById('console-status').textContent !== 'connected')
    return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) return true;
  return false;
}"""
COUNT_FRAMES = """(seconds) => new Promise((done) => {
  const c = document.querySelector('#screen canvas');
  const g = c.getContext('2d');
  let last = null, changes = 0, ticks = 0;
  const end = performance.now() + seconds * 1000;
  function tick() {
    const d = g.getImageData(0, 0, c.width, c.height).data;
    let h = 0;
    for (let i = 0; i < d.length; i += 28) h = (h * 31 + d[i]) | 0;
    if (last !== null && h !== last) changes++;
    last = h; ticks++;
    if (performance.now() < end) requestAnimationFrame(tick);
    else done([changes / seconds, ticks / seconds]);
  }
  requestAnimationFrame(tick);
})"""
# The baseline's page: the dashboard's console panel (same markup and style.css, so the
# same 800x450 scaled screen) and the same RFB options as kasou/web/screen.js, connecting
# to websockify on the page's own port instead of the daemon's token-checked proxy.
BASELINE_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>plain QEMU + websockify</title>
<link rel="stylesheet" href="style.css"></head>
<body>
<main>
  <section id="console-panel">
    <h2>Screen: <span id="console-vm">plain</span> <span id="console-status"></span>
      <button id="console-open">console</button> <button id="console-close">Close</button></h2>
    <div id="screen"></div>
  </section>
</main>
<script type="module">
  import RFB from "./vendor/novnc/core/rfb.js";
  const status = document.getElementById("console-status");
  let rfb = null;
  document.getElementById("console-open").addEventListener("click", () => {
    if (rfb) { rfb.disconnect(); rfb = null; }
    rfb = new RFB(document.getElementById("screen"), `ws://${location.host}/websockify`,
                  { wsProtocols: ["binary"] });
    rfb.scaleViewport = true;
    rfb.focusOnClick = true;
    status.textContent = "connecting";
    const mine = rfb;
    rfb.addEventListener("connect", () => { status.textContent = "connected"; mine.focus(); });
    rfb.addEventListener("disconnect", (e) => {
      if (rfb === mine) status.textContent = e.detail.clean ? "disconnected" : "refused or lost";
    });
  });
  document.getElementById("console-close").addEventListener("click", () => {
    if (rfb) { rfb.disconnect(); rfb = null; }
    status.textContent = "";
  });
</script>
</body>
</html>
"""


# --- small helpers ----------------------------------------------------------------------------

def _cli() -> list[str]:
    """The installed console script, run directly (as run.py does: a pyenv shim adds bash)."""
    exe = Path(sys.executable).with_name("kasou")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kasou"]


def _kasou(env: dict[str, str], *args: str) -> str:
    return subprocess.run([*_cli(), *args], env=env, check=True, capture_output=True,
                          text=True, timeout=600).stdout


def _timed(env: dict[str, str], *args: str) -> float:
    t0 = time.monotonic()
    _kasou(env, *args)
    return time.monotonic() - t0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def _is_qemu(pid: int) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0).startswith(b"qemu")


def _proxy_cpu(root: int) -> dict[int, float]:
    """CPU seconds of `root` and its descendants that are not QEMU (the sandboxed QEMU is
    the daemon's child; websockify forks a child per connection)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, todo = [root], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        tree += kids
        todo += kids
    out: dict[int, float] = {}
    for p in tree:
        if p == root or not _is_qemu(p):
            with contextlib.suppress(OSError):
                out[p] = _cpu_s(p)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait(pred: Callable[[], bool], timeout: float, what: str = "benchmark step") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what} timed out after {timeout:.0f} s")


def _ready_count(log: Path, name: str) -> int:
    try:
        return log.read_bytes().count(f"KASOU READY {name}".encode())
    except FileNotFoundError:
        return 0


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float], scale: float = 1.0, unit: str = "s", fmt: str = ".2f") -> str:
    if not xs:
        return "not measured"
    return (f"{_median(xs) * scale:{fmt}} {unit} (min {min(xs) * scale:{fmt}}, "
            f"max {max(xs) * scale:{fmt}})")


@dataclass
class Procs:
    """Processes this benchmark started itself, stopped by their own id at the end."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def popen(self, argv: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, stdout=f, stderr=f, start_new_session=True, **kw)
        self.started.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 30) -> None:
        """SIGTERM to the process group it leads (its own session: it and the children it
        forked), then SIGKILL to what is left of the group, then reap it. The leader is
        reaped only after both, so its pid (the group's id) cannot have been reused."""
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and os.waitid(
                    os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        if p in self.started:
            self.started.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.started)):
            with contextlib.suppress(Exception):
                self.stop(p)


# --- the plain-QEMU baseline ------------------------------------------------------------------

def _websockify() -> tuple[list[str], str] | None:
    """websockify's command and version: Debian's package or the pip one, else None."""
    exe = shutil.which("websockify")
    if exe:
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "websockify"],
                             capture_output=True, text=True).stdout.strip()
        return [exe], f"websockify {ver}" if ver else "websockify"
    with contextlib.suppress(Exception):
        from importlib.metadata import version
        return [sys.executable, "-m", "websockify"], f"websockify {version('websockify')}"
    return None


def plain_argv(argv: list[str], vm_dir: str, scratch: Path, vnc: Path) -> list[str]:
    """kasou's command line for the VM, as plain QEMU runs it: run-dir paths moved to
    `scratch`, `-vnc none` -> `-vnc unix:VNC`, in the foreground (no -daemonize/-pidfile)
    and without the QMP monitor only the daemon uses. Everything the guest sees stays."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if a == "-daemonize":
            i += 1
            continue
        if a == "-pidfile" or (a == "-chardev" and nxt.startswith("socket,id=qmp,")) or (
                a == "-mon" and nxt.startswith("chardev=qmp,")):
            i += 2
            continue
        if a == "-vnc":
            out += ["-vnc", f"unix:{vnc}"]
            i += 2
            continue
        out.append(a.replace(vm_dir, str(scratch)))
        i += 1
    return out


def _web_dir(tmp: Path) -> Path:
    """What websockify --web serves: kasou's vendored noVNC, its style.css, our page."""
    web = tmp / "web"
    shutil.copytree(NOVNC, web / "vendor" / "novnc")
    shutil.copy(ROOT / "kasou" / "web" / "style.css", web / "style.css")
    (web / "console.html").write_text(BASELINE_PAGE)
    return web


# --- browser measurements ---------------------------------------------------------------------

def _first_frame_ms(page: Any, button: Any) -> float:
    """From the click on `button` to the first animation frame showing a connected, non-black
    canvas; the connection is closed again after."""
    page.bring_to_front()
    button.wait_for()
    t0 = time.perf_counter()
    button.click()
    page.wait_for_function(FIRST_FRAME, timeout=60_000, polling="raf")
    ms = (time.perf_counter() - t0) * 1000
    page.click("#console-close")
    return ms


def _scroll(page: Any, button: Any, proxy: int, qemu: int) -> dict[str, float]:
    """Open the screen, run `yes` on tty1, and watch SCROLL_S seconds of it."""
    page.bring_to_front()
    button.click()
    page.wait_for_function(FIRST_FRAME, timeout=60_000, polling="raf")
    page.locator("#screen canvas").click()
    page.keyboard.type("yes kasou-scrolling-0123456789", delay=60)
    page.keyboard.press("Enter")
    time.sleep(2)      # let the scrolling start before the window opens
    p0, q0, t0 = _proxy_cpu(proxy), _cpu_s(qemu), time.monotonic()
    changes, ticks = page.evaluate(COUNT_FRAMES, SCROLL_S)
    p1, q1 = _proxy_cpu(proxy), _cpu_s(qemu)
    wall = time.monotonic() - t0
    page.keyboard.press("Control+c")
    page.click("#console-close")
    return {"fps": changes, "raf": ticks,
            "proxy_cpu": sum(c - p0.get(p, 0.0) for p, c in p1.items()) / wall * 100,
            "qemu_cpu": (q1 - q0) / wall * 100}


@dataclass
class Ctx:
    home: Path
    tmp: Path
    env: dict[str, str]
    base: str
    daemon: subprocess.Popen[bytes]
    procs: Procs


def _console(c: Ctx) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    token = (c.home / "api.token").read_text().strip()
    _kasou(c.env, "vm", "create", "desk", "--image", "tiny", "--display", "--start")
    vm_id = json.loads(_kasou(c.env, "vm", "show", "desk", "--json"))["id"]
    vm_dir = c.home / "vms" / vm_id
    _wait(lambda: _ready_count(vm_dir / "serial.log", "desk") > 0, 180, "kasou guest boot")
    rt = json.loads((vm_dir / "runtime.json").read_text())
    out: dict[str, Any] = {"kasou": {"first_frame_ms": []}, "plain": None,
                           "kasou_pid": rt["pid"]}

    ws = _websockify()
    plain_qemu = wport = None
    if ws is None:
        out["plain_missing"] = "websockify is not installed (Debian: apt-get install websockify)"
    else:
        scratch = c.tmp / "plain"
        scratch.mkdir()
        vnc = scratch / "vnc.sock"
        argv = plain_argv(list(rt["argv"]), str(vm_dir), scratch, vnc)
        plain_qemu = c.procs.popen(argv, scratch / "qemu.log")
        _wait(lambda: _ready_count(scratch / "serial.log", "desk") > 0, 180,
              "plain QEMU guest boot")
        _wait(vnc.exists, 10, "QEMU's VNC socket")
        wport = _free_port()
        web = _web_dir(c.tmp)
        wsp = c.procs.popen([*ws[0], "--web", str(web), "--unix-target", str(vnc),
                             f"127.0.0.1:{wport}"], c.tmp / "websockify.log")
        _wait(lambda: _port_open(wport), 30, "websockify")
        out["plain"] = {"first_frame_ms": [], "argv": argv, "websockify": ws[1],
                        "websockify_pid": wsp.pid, "qemu_pid": plain_qemu.pid}

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            kpage = ctx.new_page()
            kpage.goto(c.base + "/")
            kpage.fill("#token", token)
            kpage.click("#login-form button")
            kbutton = kpage.locator("tr[data-vm=desk]").get_by_role("button", name="console")
            ppage = pbutton = None
            if out["plain"] is not None:
                ppage = ctx.new_page()
                ppage.goto(f"http://127.0.0.1:{wport}/console.html")
                pbutton = ppage.locator("#console-open")
            for _ in range(RUNS):      # interleaved, so drift hits both sides alike
                out["kasou"]["first_frame_ms"].append(_first_frame_ms(kpage, kbutton))
                if ppage is not None:
                    out["plain"]["first_frame_ms"].append(_first_frame_ms(ppage, pbutton))
            out["kasou"].update(_scroll(kpage, kbutton, c.daemon.pid, rt["pid"]))
            # the kasou guest goes before the baseline scrolls: one scrolling guest at a time
            _kasou(c.env, "vm", "kill", "desk")
            if ppage is not None and plain_qemu is not None:
                out["plain"].update(_scroll(ppage, pbutton, out["plain"]["websockify_pid"],
                                            plain_qemu.pid))
        finally:
            ctx.close()
    return out


# --- desktop pools ----------------------------------------------------------------------------

def _wait_assigned_ready(c: Ctx, pool: str, user: str) -> tuple[float, str]:
    """Seconds from invoking `desktop-pool assign` to KASOU READY on the desktop's serial log,
    and the desktop's name. The logs of all the pool's desktops are watched (assign picks)."""
    vms = json.loads(_kasou(c.env, "vm", "list", "--json"))
    logs = {v["name"]: c.home / "vms" / v["id"] / "serial.log" for v in vms
            if v["name"].startswith(f"{pool}-")}
    before = {n: _ready_count(p, n) for n, p in logs.items()}
    seen: list[str] = []

    def ready() -> bool:
        seen.extend(n for n, p in logs.items() if _ready_count(p, n) > before[n])
        return bool(seen)

    t0 = time.monotonic()
    proc = subprocess.Popen([*_cli(), "desktop-pool", "assign", pool, user, "--json"],
                            env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait(ready, 180, "assigned desktop boot")
        t1 = time.monotonic()
    finally:
        out, err = proc.communicate(timeout=120)
    if proc.returncode:
        raise RuntimeError(f"desktop-pool assign failed: {err.decode().strip()}")
    vm = json.loads(out)["vm"]
    if seen[0] != vm:
        raise RuntimeError(f"assign gave {vm} but {seen[0]} booted")
    return t1 - t0, vm


def _start_ready(c: Ctx, name: str) -> float:
    vm_id = json.loads(_kasou(c.env, "vm", "show", name, "--json"))["id"]
    log = c.home / "vms" / vm_id / "serial.log"
    before = _ready_count(log, name)
    t0 = time.monotonic()
    proc = subprocess.Popen([*_cli(), "vm", "start", name], env=c.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait(lambda: _ready_count(log, name) > before, 180, "VM boot")
        t1 = time.monotonic()
    finally:
        _, err = proc.communicate(timeout=120)
    if proc.returncode:
        raise RuntimeError(f"vm start failed: {err.decode().strip()}")
    return t1 - t0


def _pools(c: Ctx) -> dict[str, Any]:
    env = c.env
    _kasou(env, "user", "create", "alice")
    _kasou(env, "volume", "create", "base", "--size", "32M")
    _kasou(env, "volume", "template", "base")
    template = json.loads(_kasou(env, "volume", "show", "base", "--json"))["path"]
    r: dict[str, list[float]] = {k: [] for k in (
        "create", "qemu_img", "delete", "assign", "start", "return", "noop")}
    for i in range(RUNS):              # interleaved: plain loop, then kasou
        d = c.tmp / f"overlays-{i}"
        d.mkdir()
        t0 = time.monotonic()
        for n in range(1, POOL_SIZE + 1):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", template,
                            "-F", "qcow2", str(d / f"lab-{n}.qcow2")], check=True,
                           capture_output=True)
        r["qemu_img"].append(time.monotonic() - t0)
        shutil.rmtree(d)
        r["create"].append(_timed(env, "desktop-pool", "create", "lab", "--from", "base",
                                  "--size", str(POOL_SIZE), "--image", "tiny"))
        r["noop"].append(_timed(env, "desktop-pool", "list"))
        if i < RUNS - 1:
            r["delete"].append(_timed(env, "desktop-pool", "delete", "lab"))
    # The same spec as a pool desktop (pool.py's _vm_spec): pc, VGA, 1 vCPU, 256M, its own
    # linked clone of the template, the tiny image's kernel.
    _kasou(env, "vm", "create", "solo", "--image", "tiny", "--from", "base", "--display",
           "--machine", "pc", "--vcpus", "1", "--memory", "256M")
    for _ in range(RUNS):              # interleaved: assign, return, then a plain start
        t, _vm = _wait_assigned_ready(c, "lab", "alice")
        r["assign"].append(t)
        r["return"].append(_timed(env, "desktop-pool", "return", "lab", "alice"))
        r["start"].append(_start_ready(c, "solo"))
        _kasou(env, "vm", "kill", "solo")
    r["delete"].append(_timed(env, "desktop-pool", "delete", "lab"))
    _kasou(env, "vm", "delete", "solo")
    return r


# --- setup, cleanup, report -------------------------------------------------------------------

def _cleanup_kasou(c: Ctx) -> None:
    """Everything the daemon runs, removed through the daemon (so it drops its cgroups),
    then any QEMU of this home still alive killed by its recorded pid and start time."""
    for args in (("desktop-pool", "delete", "lab", "--force"), ("vm", "kill", "desk"),
                 ("vm", "kill", "solo"), ("vm", "delete", "desk"), ("vm", "delete", "solo")):
        with contextlib.suppress(Exception):
            _kasou(c.env, *args)
    for rt in c.home.glob("vms/*/runtime.json"):
        with contextlib.suppress(Exception):
            info = json.loads(rt.read_text())
            pid = int(info["pid"])
            if _start_ticks(pid) == int(info["proc_start"]):
                os.kill(pid, signal.SIGKILL)


def _measure(tmp: Path, procs: Procs) -> tuple[dict[str, Any], dict[str, Any]]:
    home = tmp / "home"
    home.mkdir()
    env = {**os.environ, "KASOU_HOME": str(home)}
    env.pop("KASOU_URL", None)
    env.pop("KASOU_TOKEN", None)
    port = _free_port()
    daemon = procs.popen([*_cli(), "serve", "--listen", f"tcp:127.0.0.1:{port}",
                          "--cpu-overcommit", str(CPU_OVERCOMMIT)], tmp / "kasoud.log",
                         env=env)
    c = Ctx(home=home, tmp=tmp, env=env, base=f"http://127.0.0.1:{port}", daemon=daemon,
            procs=procs)
    try:
        _wait(lambda: (home / "api.token").exists() and (home / "kasou.sock").exists(), 60,
              "daemon start")
        con = _console(c)
        for p in list(procs.started):    # the baseline's websockify and QEMU
            if p is not daemon:
                procs.stop(p)
        pools = _pools(c)
    finally:
        _cleanup_kasou(c)
        procs.stop(daemon)
    return con, pools


def run() -> str:
    build_image("tiny")
    load = os.getloadavg()[0]
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="kasou-bench-desktop-") as tmp:
        try:
            con, pools = _measure(Path(tmp), procs)
        finally:
            procs.stop_all()
    return report(con, pools, load)


def report(con: dict[str, Any], pools: dict[str, list[float]], load: float) -> str:
    k, p = con["kasou"], con["plain"]

    def ff(side: dict[str, Any] | None) -> str:
        return _spread(side["first_frame_ms"], unit="ms", fmt=".0f") if side else "—"

    def fig(side: dict[str, Any] | None, key: str, fmt: str) -> str:
        return format(side[key], fmt) if side and key in side else "—"

    lines = [
        "## Desktop: the VM's screen in the browser", "",
        "Headless Chromium (Debian, through Playwright), tiny guest on pc with VGA, TCG, "
        f"2 cores shared by guest, browser and proxy (load average {load:.2f} at the start). "
        "**kasou**: the dashboard, noVNC through the daemon's WebSocket proxy (console token, "
        "QMP add_client, no VNC listener; QEMU sandboxed as its own user). **Baseline**: the "
        "same guest by plain `qemu-system-x86_64` as root, with kasou's own command line "
        "from runtime.json but `-vnc unix:SOCKET` (no -daemonize/-pidfile, no QMP monitor), "
        + (f"{p['websockify']} to a TCP port, serving a page with the dashboard's console "
           "markup and style that opens the same noVNC module (kasou's vendored copy) with "
           "the same options." if p else "not measured: " + con.get("plain_missing", "")),
        "",
        "First frame: from Playwright's click on the page's \"console\" button (page already "
        "loaded, the previous connection closed) to the first animation frame in which the "
        "status reads \"connected\" and the canvas holds a non-black pixel. kasou's click "
        "also mints a console token over the API; the baseline's opens the WebSocket at "
        f"once. {len(k['first_frame_ms'])} runs each, interleaved kasou/baseline. Scrolling: "
        f"`yes` typed on tty1 through noVNC, a {SCROLL_S:.0f} s window once it runs, one "
        "guest scrolling at a time; frames/s = canvas changes seen per animation frame; "
        "proxy CPU = the daemon process (kasou) or websockify and its per-connection child "
        "(baseline), from /proc.", "",
        "| figure | kasou | plain QEMU + websockify |", "|---|---|---|",
        f"| click \"console\" → first frame (median) | {ff(k)} | {ff(p)} |",
        f"| frames/s shown while the screen scrolls | {fig(k, 'fps', '.1f')} | "
        f"{fig(p, 'fps', '.1f')} |",
        f"| browser animation frames/s meanwhile | {fig(k, 'raf', '.0f')} | "
        f"{fig(p, 'raf', '.0f')} |",
        f"| proxy CPU while scrolling (% of a core) | {fig(k, 'proxy_cpu', '.1f')} | "
        f"{fig(p, 'proxy_cpu', '.1f')} |",
        f"| QEMU CPU while scrolling (% of a core) | {fig(k, 'qemu_cpu', '.0f')} | "
        f"{fig(p, 'qemu_cpu', '.0f')} |",
        "",
        "## Desktop pools", "",
        f"A template (`kasou volume create base --size 32M`, `volume template base`); "
        f"desktops: 1 vCPU, 256 MiB, pc + VGA, tiny image, each a linked clone. Times from "
        f"invoking the CLI (the console script, through the daemon) to its exit, or to the "
        f"guest's `KASOU READY` line on the serial log; medians of {RUNS} (min, max). The "
        f"daemon runs with `--cpu-overcommit {CPU_OVERCOMMIT}` (the default 4 vCPUs per "
        f"core refuses a pool of {POOL_SIZE} one-vCPU desktops on 2 cores).", "",
        "| figure | kasou | plain baseline |", "|---|---|---|",
        f"| create a pool of {POOL_SIZE} (linked clones, VMs defined, not started) | "
        f"{_spread(pools['create'])} | {POOL_SIZE} × `qemu-img create -f qcow2 -b TEMPLATE "
        f"-F qcow2` in a loop: {_spread(pools['qemu_img'])} |",
        f"| `desktop-pool assign` → guest READY | {_spread(pools['assign'])} | "
        f"`kasou vm start` of a same-spec VM → READY: {_spread(pools['start'])} |",
        f"| `desktop-pool return` (policy reset: kill, discard, fresh clone) | "
        f"{_spread(pools['return'])} | — |",
        f"| `desktop-pool delete` (pool of {POOL_SIZE} free desktops) | "
        f"{_spread(pools['delete'])} | — |",
        f"| a no-op CLI call (`desktop-pool list`), for scale | {_spread(pools['noop'])} | — |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
