"""Desktop figures for `make bench` (bench/run.py calls run()).

In real headless Chromium (Debian's, through Playwright) on the kasou dashboard, with a
tiny guest that has a screen:
1. Console latency: from clicking "console" to the first frame drawn in the canvas (the
   token request, the WebSocket, QMP add_client, the RFB handshake and the first update).
2. While the guest's screen scrolls (`yes` on tty1): frames per second the browser shows
   (canvas changes seen per animation frame) and the CPU the daemon (the WebSocket proxy)
   and QEMU use, from /proc.

Figures, not assertions: nothing here fails on a number.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kasou.images.registry import build_image  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
SCROLL_S = 10.0
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


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _kasou(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "kasou", *args], env=env, check=True,
                          capture_output=True, text=True, timeout=300).stdout


def _wait(pred: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise TimeoutError("benchmark step timed out")


def _measure(home: Path, base: str, env: dict[str, str], daemon_pid: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    token = (home / "api.token").read_text().strip()
    _kasou(env, "vm", "create", "desk", "--image", "tiny", "--display", "--start")
    log = next((home / "vms").glob("*/serial.log"))
    _wait(lambda: "KASOU READY desk" in log.read_text(errors="replace"), 180)
    qemu_pid = int(next((home / "vms").glob("*/pid")).read_text())
    out: dict[str, Any] = {"first_frame_ms": []}
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = ctx.new_page()
        page.goto(base + "/")
        page.fill("#token", token)
        page.click("#login-form button")
        button = page.locator("tr[data-vm=desk]").get_by_role("button", name="console")
        for _ in range(RUNS):
            button.wait_for()
            t0 = time.perf_counter()
            button.click()
            page.wait_for_function(FIRST_FRAME, timeout=60_000, polling="raf")
            out["first_frame_ms"].append((time.perf_counter() - t0) * 1000)
            page.click("#console-close")
        button.click()
        page.wait_for_function(FIRST_FRAME, timeout=60_000, polling="raf")
        page.locator("#screen canvas").click()
        page.keyboard.type("yes kasou-scrolling-0123456789", delay=60)
        page.keyboard.press("Enter")
        time.sleep(2)      # let the scrolling start before the window opens
        cpu0 = {p: _cpu_s(p) for p in (daemon_pid, qemu_pid)}
        t0 = time.monotonic()
        changes, ticks = page.evaluate(COUNT_FRAMES, SCROLL_S)
        wall = time.monotonic() - t0
        out["cpu"] = {p: (_cpu_s(p) - c) / wall * 100 for p, c in cpu0.items()}
        out["fps"], out["raf"] = changes, ticks
        out["daemon_pid"], out["qemu_pid"] = daemon_pid, qemu_pid
        page.keyboard.press("Control+c")
        ctx.close()
    return out


def run() -> str:
    build_image("tiny")
    with tempfile.TemporaryDirectory(prefix="kasou-bench-desktop-") as tmp:
        home = Path(tmp)
        env = {**os.environ, "KASOU_HOME": str(home)}
        env.pop("KASOU_URL", None)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        daemon = subprocess.Popen([sys.executable, "-m", "kasou", "serve", "--listen",
                                   f"tcp:127.0.0.1:{port}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            _wait(lambda: (home / "api.token").exists() and (home / "kasou.sock").exists(), 60)
            r = _measure(home, base, env, daemon.pid)
        finally:
            with contextlib.suppress(Exception):
                _kasou(env, "vm", "kill", "desk")
            daemon.terminate()
            daemon.wait(30)
    ff = r["first_frame_ms"]
    cpu = r["cpu"]
    return "\n".join([
        "## Desktop: the VM's screen in the browser", "",
        "Headless Chromium (Debian) on the dashboard, tiny guest on pc with VGA, TCG, "
        "noVNC through the daemon's WebSocket proxy (QMP add_client, no VNC listener).", "",
        "| figure | value |", "|---|---|",
        f"| click \"console\" → first frame (median of {len(ff)}) | "
        f"{statistics.median(ff):.0f} ms (min {min(ff):.0f}, max {max(ff):.0f}) |",
        f"| frames/s shown while the screen scrolls (`yes`, {SCROLL_S:.0f} s) | "
        f"{r['fps']:.1f} (browser animation frames/s: {r['raf']:.0f}) |",
        f"| daemon (proxy) CPU while scrolling | {cpu.get(r['daemon_pid'], 0):.1f}% of a core |",
        f"| QEMU CPU while scrolling | {cpu.get(r['qemu_pid'], 0):.1f}% of a core |",
        "",
        "Not measured: a plain-QEMU baseline (websockify + noVNC without kasou) in the same "
        "run.", "",
    ])


if __name__ == "__main__":
    print(run())
