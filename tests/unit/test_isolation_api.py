"""The isolation and metrics routes over a real service and SQLite (no QEMU), with the
cgroup backend over a fake v2 tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kasou.api.app import create_app
from kasou.host.capacity import HostCapacity
from kasou.host.cgroups import CgroupsV2
from kasou.host.probe import HostInfo
from kasou.isolation.hook import IsolationHook
from kasou.isolation.setup import Isolation
from kasou.metrics import setup as metrics_setup
from kasou.paths import Layout
from kasou.service.platform import Platform
from kasou.service.vms import VMService
from kasou.store.isolation import LimitsStore
from kasou.store.sqlite import SQLiteStore
from kasou.store.tenancy import TenancyStore
from kasou.tenancy.models import UserSpec
from kasou.tenancy.service import TenancyService


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    layout = Layout(tmp_path / "home")
    layout.ensure()
    host = HostInfo(cores=2, memory_mib=4096, qemu_binary="qemu-system-x86_64",
                    qemu_version="7.2.0", machines={"microvm": 288, "pc": 255, "q35": 288},
                    accelerator="tcg", accelerator_reason="test", tsc_khz=None,
                    cgroup_version="v2", kernel_release="6.1")
    cg_root = tmp_path / "cgroup"
    cg_root.mkdir()
    (cg_root / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    (cg_root / "cpuset.cpus.effective").write_text("0-1\n")
    store = SQLiteStore(layout.db)
    limits = LimitsStore(store)
    hook = IsolationHook(layout, limits, CgroupsV2(cg_root / "kasou", cg_root), host,
                         images_root=tmp_path / "images")
    metrics = metrics_setup.prepare(store, 5.0)
    svc = VMService(layout, store, host, HostCapacity(2, 4096), images_root=tmp_path / "images",
                    hooks=[hook, metrics_setup.hook(metrics)])
    platform = Platform(layout=layout, store=store, vms=svc,
                        tenancy=TenancyService(TenancyStore(store)))
    Isolation(hook=hook, launcher=None, store=limits).join(platform)
    metrics_setup.join(metrics, platform)
    platform.tenancy.create_user(UserSpec(name="root", admin=True))
    token = platform.tenancy.create_token("root").token
    with TestClient(create_app(platform), headers={"Authorization": f"Bearer {token}"}) \
            as client:
        yield client


@pytest.fixture
def vm(api: TestClient, tmp_path: Path) -> str:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"not really a kernel")
    r = api.post("/api/v1/vms", json={"name": "a", "kernel": str(kernel), "vcpus": 2,
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
