"""Tenancy end to end: the real daemon on TCP with TLS, the real CLI with tokens."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request
from pathlib import Path

from tests.integration.conftest import Kasou


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tls_tokens_projects_and_roles_through_the_cli(kasou: Kasou) -> None:
    kasou.stop_daemon()
    port = free_port()
    kasou.start_daemon("--listen", f"tcp:127.0.0.1:{port}", "--tls-self-signed")
    admin_token = (kasou.home / "api.token").read_text().strip()
    assert oct((kasou.home / "api.token").stat().st_mode & 0o777) == "0o600"
    cert = kasou.home / "tls" / "cert.pem"
    # Plain HTTP on the TLS port does not get an answer.
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/vms", timeout=5)
        raise AssertionError("plain HTTP was answered on the TLS port")
    except (OSError, ValueError):
        pass

    def remote(token: str, *args: str, check: bool = True) -> str:
        env = {"KASOU_URL": f"https://127.0.0.1:{port}", "KASOU_TOKEN": token,
               "KASOU_CA": str(cert)}
        saved = dict(kasou.env)
        kasou.env.update(env)
        try:
            r = kasou.run(*args, check=check)
        finally:
            kasou.env.clear()
            kasou.env.update(saved)
        return r.stdout + r.stderr

    remote(admin_token, "project", "create", "shop", "--vms", "1", "--memory", "512M")
    remote(admin_token, "user", "create", "alice")
    remote(admin_token, "user", "create", "bob")
    remote(admin_token, "project", "add-member", "shop", "alice", "--role", "member")
    remote(admin_token, "project", "add-member", "shop", "bob", "--role", "viewer")
    alice = remote(admin_token, "token", "create", "alice").splitlines()[0].strip()
    bob = remote(admin_token, "token", "create", "bob").splitlines()[0].strip()

    assert "tiny-a" in remote(alice, "vm", "create", "tiny-a", "--image", "tiny")
    # quota: one VM only
    out = remote(alice, "vm", "create", "tiny-b", "--image", "tiny", check=False)
    assert "quota of project 'shop' exceeded" in out and "vms: 1 used + 1 asked > 1" in out
    # viewer sees, cannot act
    assert "tiny-a" in remote(bob, "vm", "list")
    out = remote(bob, "vm", "delete", "tiny-a", check=False)
    assert "bob is viewer in project 'shop'; delete needs" in out
    # nobody outside the project sees it; the local admin (Unix socket) sees it with -p
    assert "tiny-a" not in kasou.run("vm", "list").stdout
    assert "tiny-a" in kasou.run("--project", "shop", "vm", "list").stdout
    # a wrong or revoked token is refused
    assert "error: unknown token" in remote("kasou_x_y", "vm", "list", check=False)
    tid = alice.split("_")[1]
    remote(admin_token, "token", "revoke", tid)
    assert "revoked" in remote(alice, "vm", "list", check=False)
    # the audit log has it all, and its chain holds
    entries = json.loads(remote(admin_token, "audit", "--json", "--limit", "1000"))
    seen = {(e["actor"], e["action"], e["status"]) for e in entries}
    assert ("alice", "POST /api/v1/vms", 201) in seen
    assert ("alice", "POST /api/v1/vms", 403) in seen            # over quota
    assert ("bob", "DELETE /api/v1/vms/{name}", 403) in seen     # viewer
    assert ("anonymous", "GET /api/v1/vms", 401) in seen         # unknown token
    assert all(e["source"] == "127.0.0.1" for e in entries if e["actor"] == "alice")
    assert '"ok": true' in remote(admin_token, "audit", "--verify", "--json")


def test_tls_certificate_is_checked(kasou: Kasou, tmp_path: Path) -> None:
    kasou.stop_daemon()
    port = free_port()
    kasou.start_daemon("--listen", f"tcp:127.0.0.1:{port}", "--tls-self-signed")
    ctx = ssl.create_default_context()   # the system CAs do not know kasou's certificate
    try:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=5, context=ctx)
        raise AssertionError("an unknown certificate was accepted")
    except urllib.error.URLError as e:
        assert "CERTIFICATE_VERIFY_FAILED" in str(e)
