"""The isolation and metrics routes over a real service and SQLite (no QEMU), with the
cgroup backend over a fake v2 tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kasou.host.cgroups import CgroupsV2
from kasou.isolation.hook import IsolationHook
from kasou.isolation.setup import Isolation
from kasou.metrics import setup as metrics_setup
from kasou.store.isolation import LimitsStore
from tests.unit.fakes import admin_token, api_client, fake_home, fake_kernel, fake_platform


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    home = fake_home(tmp_path)
    cg_root = tmp_path / "cgroup"
    cg_root.mkdir()
    (cg_root / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (cg_root / "cpuset.cpus.effective").write_text("0-1\n")
    limits = LimitsStore(home.store)
    hook = IsolationHook(home.layout, limits, CgroupsV2(cg_root / "kasou", cg_root), home.host,
                         images_root=home.images)
    metrics = metrics_setup.prepare(home.store, 5.0)
    platform = fake_platform(home, hooks=[hook, metrics_setup.hook(metrics)])
    Isolation(hook=hook, launcher=None, store=limits).join(platform)
    metrics_setup.join(metrics, platform)
    with api_client(platform, admin_token(platform.tenancy)) as client:
        yield client


@pytest.fixture
def vm(api: TestClient, tmp_path: Path) -> str:
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": fake_kernel(tmp_path), "vcpus": 2,
                                      "limits": {"cpu_limit": 1.5, "pin": "1"}})
    assert r.status_code == 201, r.text
    return "a"


def test_limits_set_on_a_stopped_vm_are_kept(api: TestClient, vm: str) -> None:
    got = api.get(f"/api/v1/vms/{vm}/limits").json()
    assert got["limits"]["cpu_limit"] == 1.5 and got["limits"]["pin"] == "1"
    r = api.patch(f"/api/v1/vms/{vm}/limits", json={"cpu_limit": None, "cpu_weight": 300,
                                                    "memory_target": "128M"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["live"] is False and body["memory_max_mib"] == 256 + 128 + 64
    assert body["limits"] == {"cpu_limit": None, "cpu_weight": 300, "pin": "1",
                              "memory_target": 128, "io_weight": None}
    shown = api.get(f"/api/v1/vms/{vm}").json()["extras"]["isolation"]
    assert shown["limits"] == {"cpu_weight": 300, "pin": "1", "memory_target": 128}


@pytest.mark.parametrize(("body", "field"), [
    ({"cpu_limit": 3}, "cpu_limit"), ({"pin": "7"}, "pin"), ({"memory_target": "1G"},
                                                             "memory_target"),
    ({"io_weight": 0}, "io_weight"), ({"colour": "red"}, "colour"),
])
def test_bad_limit_changes_name_the_field(api: TestClient, vm: str, body: dict[str, object],
                                          field: str) -> None:
    r = api.patch(f"/api/v1/vms/{vm}/limits", json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert api.get(f"/api/v1/vms/{vm}/limits").json()["limits"]["cpu_limit"] == 1.5


def test_bad_create_limits_name_the_field(api: TestClient, tmp_path: Path) -> None:
    kernel = tmp_path / "k"
    kernel.write_bytes(b"k")
    r = api.post("/api/v1/vms", json={"name": "b", "kernel": str(kernel),
                                      "limits": {"cpu_limit": 2}})
    assert r.status_code == 422 and r.json()["field"] == "limits.cpu_limit", r.text
    assert api.get("/api/v1/vms/b").status_code == 404


def test_metrics_routes(api: TestClient, vm: str) -> None:
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "# TYPE kasou_vm_up gauge" in r.text
    stats = api.get(f"/api/v1/vms/{vm}/stats", params={"since": "15m"})
    assert stats.status_code == 200 and stats.json()["points"] == []
    bad = api.get(f"/api/v1/vms/{vm}/stats", params={"since": "soon"})
    assert bad.status_code == 422 and bad.json()["field"] == "since"
    current = api.get("/api/v1/metrics/current").json()
    assert current["vms"] == [] and current["interval_s"] == 5.0
    assert api.get("/api/v1/host/ksm").status_code == 200
