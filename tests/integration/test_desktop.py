"""Desktop end to end: the dashboard in real headless Chromium (Debian's, driven by
Playwright), a tiny guest with a screen, typing through noVNC and the daemon's WebSocket
proxy, and the browser's canvas checked against QEMU's own framebuffer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ARTIFACTS, Kasou, wait_for, wait_serial

CHROMIUM = "/usr/bin/chromium"
# As asked for CI: no GPU, no network chatter of its own, a fresh profile each time.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
CANVAS_MASK = """() => {
  const c = document.querySelector('#screen canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const bits = new Array(d.length / 4);
  for (let i = 0; i < d.length; i += 4) bits[i / 4] = d[i] + d[i + 1] + d[i + 2] > 300 ? 1 : 0;
  return [c.width, c.height, bits.join('')];
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 1000})
        try:
            yield ctx
        finally:
            ctx.close()


def ppm_mask(data: bytes) -> tuple[int, int, str]:
    """The PPM's pixels as 1 (bright, i.e. text) or 0, like CANVAS_MASK."""
    magic, dims, maxval, pixels = data.split(b"\n", 3)
    assert magic == b"P6" and maxval == b"255"
    width, height = map(int, dims.split())
    bits = "".join("1" if pixels[i] + pixels[i + 1] + pixels[i + 2] > 300 else "0"
                   for i in range(0, width * height * 3, 3))
    return width, height, bits


def screendump(base: str, token: str, name: str) -> tuple[int, int, str]:
    req = urllib.request.Request(f"{base}/api/v1/vms/{name}/screenshot?format=ppm",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return ppm_mask(r.read())


def same_screen(page: Any, base: str, token: str, name: str) -> bool:
    """The browser's canvas shows what QEMU's VGA shows (text pixels agree ≥ 99.5%)."""
    cw, ch, canvas = page.evaluate(CANVAS_MASK)
    qw, qh, qemu = screendump(base, token, name)
    if (cw, ch) != (qw, qh) or qemu.count("1") < 500:
        return False
    agree = sum(a == b for a, b in zip(canvas, qemu, strict=True))
    return agree / len(qemu) >= 0.995


def type_slowly(page: Any, line: str) -> None:
    """Type a line as keystrokes. Playwright's type() does not hold Shift for shifted
    characters, and noVNC sends QEMU raw scancodes, so lines use unshifted keys only
    (no capitals, no $ > |); a
    delay keeps the guest's PS/2 queue from overflowing while TCG runs it slowly."""
    page.keyboard.type(line, delay=60)
    page.keyboard.press("Enter")


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(base + "/")
    page.fill("#token", token)
    page.click("#login-form button")


def status_is(page: Any, *texts: str) -> None:
    page.wait_for_function(
        f"{list(texts)!r}.includes(document.getElementById('console-status').textContent)",
        timeout=60_000)


@pytest.fixture
def desktop(kasou: Kasou) -> tuple[Kasou, str, str]:
    """The daemon on TCP (browsers cannot use its Unix socket) and an admin token."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/install-deps.sh installs it")
    port = free_port()
    kasou.stop_daemon()
    kasou.start_daemon("--listen", f"tcp:127.0.0.1:{port}")
    token = (kasou.home / "api.token").read_text().strip()
    return kasou, f"http://127.0.0.1:{port}", token


def test_dashboard_start_console_type_and_see_the_screen(desktop: tuple[Kasou, str, str],
                                                         tmp_path: Path) -> None:
    k, base, token = desktop
    k.run("vm", "create", "desk", "--image", "tiny", "--display")
    with chromium(tmp_path / "profile") as ctx:
        page = ctx.new_page()
        try:
            sign_in(page, base, token)
            row = page.locator("tr[data-vm=desk]")
            row.get_by_role("button", name="start").click()
            row.get_by_role("button", name="console").wait_for(timeout=60_000)
            wait_serial(k.vm("desk"), r"KASOU READY desk", timeout=120)

            row.get_by_role("button", name="console").click()
            status_is(page, "connected")
            page.locator("#screen canvas").click()
            # Typed through noVNC on the screen's shell (tty1), then the guest copies its own
            # screen text (/dev/vcs1: 80-column rows, no newlines) to the serial port: the
            # computed 42 is there only if the typing worked and it is on the VGA screen.
            # (One line: the guest echoes keys typed ahead while a command still runs.)
            type_slowly(page, "expr 50 - 8; dd if=/dev/vcs1 of=/dev/console")  # ttyS0
            wait_serial(k.vm("desk"), r"desk:~# expr 50 - 8; dd if=/dev/vcs1 of=/dev/console +42 ",
                        timeout=60)
            wait_for(lambda: same_screen(page, base, token, "desk"), 60,
                     "the browser's canvas to match QEMU's screen")
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "desktop-browser.png"))
            raise


def test_console_url_from_the_cli_and_refusals_in_the_browser(
        desktop: tuple[Kasou, str, str], tmp_path: Path) -> None:
    k, base, _ = desktop
    k.run("vm", "create", "desk", "--image", "tiny", "--display", "--start")
    wait_serial(k.vm("desk"), r"KASOU READY desk", timeout=120)
    url = k.run("vm", "console", "desk", "--web", "--base", base).stdout.strip()
    assert url.startswith(f"{base}/ui/console.html?vm=desk#token=")
    forged = url[:-8] + ("A" * 8 if not url.endswith("A" * 8) else "B" * 8)
    with chromium(tmp_path / "profile") as ctx:
        bad = ctx.new_page()
        bad.goto(forged)
        status_is(bad, "refused or lost")
        page = ctx.new_page()     # a new page: only the fragment differs from the last one
        page.goto(url)
        status_is(page, "connected")
        k.run("vm", "stop", "desk", "--force")
        status_is(page, "disconnected", "refused or lost")
        page.reload()        # the same token, now for a stopped VM
        status_is(page, "refused or lost")


def test_a_desktop_user_opens_their_pool_desktop_in_the_browser(
        desktop: tuple[Kasou, str, str], tmp_path: Path) -> None:
    """VDI end to end: an operator assigns a pool desktop to alice, who has no role in any
    project; with her own token she sees only her desktop in the dashboard and its screen
    opens (the daemon starts it again after it was stopped); bob, without one, is refused."""
    k, base, _ = desktop
    k.run("volume", "create", "base", "--size", "16M")
    k.run("volume", "template", "base")
    for user in ("alice", "bob"):
        k.run("user", "create", user)
    alice = k.run("token", "create", "alice").stdout.splitlines()[0].strip()
    bob = k.run("token", "create", "bob").stdout.splitlines()[0].strip()
    k.run("desktop-pool", "create", "lab", "--from", "base", "--size", "2", "--image", "tiny")
    k.run("desktop-pool", "assign", "lab", "alice")
    wait_serial(k.vm("lab-1"), r"KASOU READY lab-1", timeout=120)
    k.run("vm", "stop", "lab-1", "--force")

    as_alice = {**k.env, "KASOU_URL": base, "KASOU_TOKEN": alice}
    mine = json.loads(subprocess.run([sys.executable, "-m", "kasou", "desktop", "list",
                                      "--json"], env=as_alice, capture_output=True,
                                     text=True, check=True).stdout)
    assert [(d["vm"], d["pool"], d["user"]) for d in mine] == [("lab-1", "lab", "alice")]
    as_bob = {**as_alice, "KASOU_TOKEN": bob}
    refused = subprocess.run([sys.executable, "-m", "kasou", "desktop", "open", "lab"],
                             env=as_bob, capture_output=True, text=True)
    assert refused.returncode == 1 and "no desktop in a pool named 'lab'" in refused.stderr
    with chromium(tmp_path / "profile") as ctx:
        page = ctx.new_page()
        try:
            sign_in(page, base, alice)
            row = page.locator("tr[data-desktop='default/lab']")
            row.get_by_role("button", name="open").click()
            status_is(page, "connected")
            assert page.locator("#vm-section").is_hidden()    # no project role: no VM list
            assert page.locator("#desktops tbody tr").count() == 1
            wait_serial(k.vm("lab-1"), r"KASOU READY lab-1", timeout=120, count=2)
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "desktop-pool-browser.png"))
            raise
