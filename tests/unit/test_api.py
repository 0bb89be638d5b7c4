"""The REST API over a real service and real SQLite (no QEMU: nothing here starts a VM)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.unit.fakes import admin_token, api_client, fake_home, fake_kernel, fake_platform


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    platform = fake_platform(fake_home(tmp_path))
    # TestClient connects as a TCP peer, so every request needs a token.
    with api_client(platform, admin_token(platform.tenancy)) as client:
        yield client


@pytest.fixture
def kernel(tmp_path: Path) -> str:
    return fake_kernel(tmp_path)


def test_create_list_show_delete(api: TestClient, kernel: str) -> None:
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": kernel, "memory": "512M",
                                      "vcpus": 2})
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["state"] == "stopped" and vm["memory"] == 512 and vm["vcpus"] == 2
    assert vm["machine"] == "microvm" and vm["accelerator"] == "tcg" and vm["pid"] is None
    assert [v["name"] for v in api.get("/api/v1/vms").json()] == ["a"]
    assert api.get(f"/api/v1/vms/{vm['id']}").json()["name"] == "a"
    assert api.delete("/api/v1/vms/a").status_code == 204
    assert api.get("/api/v1/vms/a").status_code == 404
    assert Path(kernel).exists()


def test_errors_are_json_with_the_field(api: TestClient, kernel: str) -> None:
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": kernel, "memory": 0})
    assert r.status_code == 422
    assert r.json()["field"] == "memory"
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": kernel, "vcpus": 300})
    assert r.status_code == 422 and r.json()["field"] == "vcpus"
    assert "288" in r.json()["message"]
    r = api.post("/api/v1/vms", json={"name": "a", "image": "tiny"})
    assert r.status_code == 422 and "kasou image build tiny" in r.json()["message"]
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": "/nope/vmlinuz"})
    assert r.status_code == 422 and r.json()["field"] == "kernel"
    r = api.post("/api/v1/vms/nosuch/start")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = api.post("/api/v1/vms", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_refused_transition_is_409(api: TestClient, kernel: str) -> None:
    api.post("/api/v1/vms", json={"name": "a", "kernel": kernel})
    r = api.post("/api/v1/vms/a/pause")
    assert r.status_code == 409
    assert r.json()["message"] == "cannot pause VM 'a': it is stopped; pause needs running"


def test_tcp_needs_the_token(api: TestClient) -> None:
    assert api.get("/api/v1/vms", headers={"Authorization": ""}).status_code == 401
    r = api.get("/api/v1/vms", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert api.get("/api/v1/vms").status_code == 200


def test_openapi_lists_the_resources(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for p in ("/api/v1/vms", "/api/v1/vms/{name}", "/api/v1/vms/{name}/start",
              "/api/v1/vms/{name}/stop", "/api/v1/host"):
        assert p in paths
