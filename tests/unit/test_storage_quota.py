"""Storage counts against project quotas: bytes of volumes and the number of snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kasou.api.app import create_app
from kasou.paths import Layout
from kasou.service.platform import Settings, build_platform
from kasou.tenancy.models import ProjectSpec, Quota, Role, UserSpec


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("KASOU_HOME", str(tmp_path / "home"))
    platform = build_platform(Layout(tmp_path / "home"), Settings())
    ten = platform.tenancy
    ten.create_project(ProjectSpec(name="p", quota=Quota(disk_bytes=(1 << 20) + 511)))
    ten.create_user(UserSpec(name="m"))
    ten.add_member("p", "m", Role.MEMBER)
    token = ten.create_token("m").token
    with TestClient(create_app(platform), headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


def test_disk_quota_exceeded_by_one_byte(api: TestClient, tmp_path: Path) -> None:
    r = api.post("/api/v1/volumes", json={"name": "a", "size": 1 << 20, "format": "raw"})
    assert r.status_code == 201, r.text
    r = api.post("/api/v1/volumes", json={"name": "b", "size": 512, "format": "raw"})
    assert r.status_code == 403 and r.json()["error"] == "quota_exceeded"
    assert "disk_bytes: 1048576 used + 512 asked > 1049087 allowed" in r.json()["message"]
    assert [v["name"] for v in api.get("/api/v1/volumes").json()] == ["a"]
    # the refused volume left no file behind either
    files = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and p.stat().st_size
             in (512,)]
    assert files == []
    usage = api.get("/api/v1/projects/p").json()["usage"]
    assert usage["disk_bytes"] == 1 << 20 and usage["snapshots"] == 0
