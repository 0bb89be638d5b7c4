"""Network routes over a real service and SQLite, without touching the host: security
groups (no host change until one is attached to a VM on a host network), validation
errors, forwards on user-mode VMs, and what `vm show` reports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kasou.api.routes import networks as network_routes
from kasou.network.hook import NetworkHook
from kasou.network.service import NetworkService
from tests.unit.fakes import admin_token, api_client, fake_home, fake_kernel, fake_platform


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    home = fake_home(tmp_path)
    net = NetworkService(home.layout, home.store)
    platform = fake_platform(home, hooks=[NetworkHook(net)],
                             routers=[network_routes.router(net)])
    with api_client(platform, admin_token(platform.tenancy)) as client:
        yield client


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    return fake_kernel(tmp_path)


def test_secgroup_crud_and_rules(api: TestClient) -> None:
    r = api.post("/api/v1/secgroups", json={"name": "web", "description": "front",
                                            "rules": [{"direction": "in", "protocol": "icmp"}]})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/secgroups/web/rules", json={"direction": "in", "protocol": "tcp",
                                                       "ports": "80", "priority": 10})
    assert r.status_code == 201
    rules = r.json()["rules"]
    assert [(x["protocol"], x["ports"], x["priority"]) for x in rules] == \
        [("tcp", "80", 10), ("icmp", None, 1000)]           # evaluation order
    assert api.post("/api/v1/secgroups", json={"name": "web"}).status_code == 409
    r = api.post("/api/v1/secgroups/web/rules", json={"direction": "in", "protocol": "icmp",
                                                       "ports": "80"})
    assert r.status_code == 422 and "only tcp and udp" in r.json()["message"]
    r = api.delete(f"/api/v1/secgroups/web/rules/{rules[0]['id']}")
    assert [x["protocol"] for x in r.json()["rules"]] == ["icmp"]
    assert api.delete("/api/v1/secgroups/web/rules/999").status_code == 404
    assert api.delete("/api/v1/secgroups/web").status_code == 204
    assert api.get("/api/v1/secgroups").json() == []


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_user_mode_vm_reports_forwards(api: TestClient, kernel: str) -> None:
    tcp, udp = _free_port(), _free_port(socket.SOCK_DGRAM)
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": kernel,
                                      "forwards": [f"{tcp}:22", f"127.0.0.1:{udp}:53/udp"]})
    assert r.status_code == 201, r.text
    nic = r.json()["extras"]["network"]["nics"][0]
    assert nic["kind"] == "user" and nic["ip"] == "10.0.2.15"
    assert nic["forwards"] == [f"127.0.0.1:{tcp} -> 22/tcp", f"127.0.0.1:{udp} -> 53/udp"]
    # The same host port for a second VM is refused, naming the VM that has it.
    r = api.post("/api/v1/vms", json={"name": "b", "kernel": kernel, "forwards": [f"{tcp}:80"]})
    assert r.status_code == 409 and r.json()["field"] == "forwards"
    # Security groups filter host-network NICs only.
    api.post("/api/v1/secgroups", json={"name": "g"})
    r = api.post("/api/v1/secgroups/g/attach", json={"vm": "a"})
    assert r.status_code == 422 and "no NIC on a host network" in r.json()["message"]
    r = api.put("/api/v1/vms/a/nics/0/limits", json={"inbound": "10mbit"})
    assert r.status_code == 404


def test_bad_network_input(api: TestClient, kernel: str) -> None:
    for body, field in [({"name": "n", "subnet": "10.0.0.1/24"}, "subnet"),
                        ({"name": "x" * 16, "subnet": "10.0.0.0/24"}, "name"),
                        ({"name": "n", "subnet": "10.0.0.0/24", "mode": "bridge"}, "mode")]:
        r = api.post("/api/v1/networks", json=body)
        assert r.status_code == 422 and r.json()["field"] == field, r.text
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": kernel,
                                      "nics": [{"network": "nope"}], "forwards": ["2222:22"]})
    assert r.status_code == 422 and r.json()["field"] == "forwards"
    r = api.put("/api/v1/vms/a/nics/0/limits", json={"inbound": "fast"})
    assert r.status_code == 422 and r.json()["field"] == "inbound"
    assert api.get("/api/v1/networks/nope").status_code == 404
