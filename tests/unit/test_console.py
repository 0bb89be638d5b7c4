"""Console tokens (forged, tampered, expired, other-VM) and the WebSocket proxy over a real
service, real SQLite and a stand-in VNC server on a real Unix socket (no QEMU)."""

from __future__ import annotations

import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from kasou.api.routes import console as console_routes
from kasou.console import ConsoleService, ConsoleTokens
from kasou.console import service as console_service
from kasou.console.tokens import _b64, load_key
from kasou.errors import AuthError
from kasou.service.platform import Platform
from kasou.state import VMState
from tests.unit.fakes import admin_token, api_client, fake_home, fake_kernel, fake_platform

KEY = b"k" * 32


def test_a_minted_token_opens_its_vm_until_it_expires() -> None:
    tokens = ConsoleTokens(KEY, ttl=60)
    token, exp = tokens.mint("vm-a", now=1000.0)
    assert exp == 1060.0
    tokens.verify(token, "vm-a", now=1059.9)
    assert tokens.vm_of(token, now=1000.0) == "vm-a"
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(token, "vm-a", now=1060.0)


def test_other_vm_forged_and_tampered_tokens_are_refused() -> None:
    tokens = ConsoleTokens(KEY)
    token, _ = tokens.mint("vm-a")
    with pytest.raises(AuthError, match="another VM"):
        tokens.verify(token, "vm-b")
    forged, _ = ConsoleTokens(b"x" * 32).mint("vm-a")      # signed with another key
    payload, _, sig = token.partition(".")
    other = _b64(b'{"vm":"vm-b","exp":9999999999,"n":"00"}')
    for bad in (forged, f"{other}.{sig}", f"{payload}.", f"{payload}.{sig}x", "", "abc",
                f"{_b64(b'not json')}.{tokens._sign(_b64(b'not json'))}"):
        with pytest.raises(AuthError, match="not valid"):
            tokens.vm_of(bad)


def test_key_is_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "console.key"
    key = load_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(AuthError, match="damaged"):
        load_key(path)


@pytest.fixture
def platform(tmp_path: Path) -> Platform:
    p = fake_platform(fake_home(tmp_path))
    p.routers.append(console_routes.router(ConsoleService(p.vms, ConsoleTokens(KEY))))
    return p


@pytest.fixture
def api(platform: Platform, tmp_path: Path) -> Iterator[TestClient]:
    kernel = fake_kernel(tmp_path)
    with api_client(platform, admin_token(platform.tenancy)) as client:
        for name, display in (("desk", True), ("other", True), ("plain", False)):
            r = client.post("/api/v1/vms", json={"name": name, "kernel": kernel,
                                                 "display": display})
            assert r.status_code == 201, r.text
        yield client


def _running(platform: Platform, name: str) -> None:
    platform.store.set_state(platform.store.get_vm(name).id, VMState.RUNNING)


@pytest.fixture
def fake_vnc(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stands in for QEMU's VNC server behind QMP add_client: takes the passed socket, says
    the RFB greeting and echoes, so bytes can be seen crossing the proxy both ways."""
    names: list[str] = []

    async def add_client(_qmp: object, fd: int, fdname: str) -> None:
        conn = socket.socket(fileno=os.dup(fd))
        names.append(fdname)

        def serve() -> None:
            with conn:
                conn.sendall(b"RFB 003.008\n")
                while data := conn.recv(4096):
                    conn.sendall(data)

        threading.Thread(target=serve, daemon=True).start()

    monkeypatch.setattr(console_service, "add_vnc_client", add_client)
    monkeypatch.setattr(platform.vms, "supervisor", lambda rec: SimpleNamespace(qmp=None))
    return names


def test_display_vms_get_vga_on_pc(api: TestClient) -> None:
    assert api.get("/api/v1/vms/desk").json()["spec"]["display"] is True


def test_token_needs_a_running_vm_with_a_display(api: TestClient) -> None:
    r = api.post("/api/v1/vms/desk/console-token")
    assert r.status_code == 409 and "stopped" in r.json()["message"]
    r = api.post("/api/v1/vms/plain/console-token")
    assert r.status_code == 422 and r.json()["field"] == "display"
    assert api.post("/api/v1/vms/nope/console-token").status_code == 404


def test_proxy_pipes_bytes_with_a_valid_token(api: TestClient, platform: Platform,
                                              fake_vnc: list[str]) -> None:
    _running(platform, "desk")
    grant = api.post("/api/v1/vms/desk/console-token").json()
    assert grant["url"].startswith("/api/v1/vms/desk/vnc?token=")
    with api.websocket_connect(grant["url"], subprotocols=["binary"]) as ws:
        assert ws.receive_bytes() == b"RFB 003.008\n"
        ws.send_bytes(b"RFB 003.008\n")
        assert ws.receive_bytes() == b"RFB 003.008\n"
    assert len(fake_vnc) == 1


@pytest.mark.parametrize("which", ["none", "forged", "other-vm"])
def test_proxy_refuses_bad_tokens(api: TestClient, platform: Platform, which: str,
                                  fake_vnc: list[str]) -> None:
    _running(platform, "desk")
    _running(platform, "other")
    other = api.post("/api/v1/vms/other/console-token").json()["token"]
    forged, _ = ConsoleTokens(b"x" * 32).mint(platform.store.get_vm("desk").id)
    token = {"none": "", "forged": forged, "other-vm": other}[which]
    with pytest.raises(WebSocketDenialResponse) as e, \
            api.websocket_connect(f"/api/v1/vms/desk/vnc?token={token}"):
        pass
    assert e.value.status_code == 401 and fake_vnc == []    # QEMU was never asked


def test_proxy_refuses_a_vm_stopped_after_its_token(api: TestClient, platform: Platform,
                                                    fake_vnc: list[str]) -> None:
    _running(platform, "desk")
    url = api.post("/api/v1/vms/desk/console-token").json()["url"]
    platform.store.set_state(platform.store.get_vm("desk").id, VMState.STOPPED)
    with pytest.raises(WebSocketDenialResponse) as e, api.websocket_connect(url):
        pass
    assert e.value.status_code == 409 and fake_vnc == []


def test_dashboard_is_served_without_a_token_but_the_api_is_not(api: TestClient) -> None:
    bare = TestClient(api.app)
    r = bare.get("/", follow_redirects=True)
    assert r.status_code == 200 and "<title>kasou</title>" in r.text
    assert bare.get("/ui/vendor/novnc/core/rfb.js").status_code == 200
    assert bare.get("/ui/vendor/novnc/LICENSE.txt").status_code == 200
    assert bare.get("/api/v1/vms").status_code == 401
    assert bare.post("/api/v1/vms/desk/console-token").status_code == 401


def test_screenshot_needs_a_vm_that_is_up_with_a_display(api: TestClient) -> None:
    r = api.get("/api/v1/vms/desk/screenshot")
    assert r.status_code == 409 and "stopped" in r.json()["message"]
    assert api.get("/api/v1/vms/plain/screenshot").json()["field"] == "display"
    assert api.get("/api/v1/vms/desk/screenshot?format=gif").status_code == 422
