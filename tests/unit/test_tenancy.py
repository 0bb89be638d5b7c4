"""Tenancy through the REST API: two projects, four roles, quotas, tokens, audit, limits.

Real service, real SQLite; no QEMU is started (the actions used never reach the engine, or
are refused before it).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kasou.tenancy.models import ProjectSpec, Quota, Role, UserSpec
from kasou.tenancy.ratelimit import RateLimiter
from kasou.tenancy.service import TenancyService
from tests.unit.fakes import (
    api_client,
    bearer,
    fake_home,
    fake_host,
    fake_kernel,
    fake_platform_with_quotas,
)

HOST = fake_host(memory_mib=8192, qemu_version="7.2")


@dataclass
class World:
    client: TestClient
    tenancy: TenancyService
    tokens: dict[str, str]
    kernel: str
    db: Path

    def as_(self, who: str) -> dict[str, str]:
        return bearer(self.tokens[who])

    def vm(self, name: str, project: str, who: str = "admin", **extra: object) -> int:
        body = {"name": name, "kernel": self.kernel, **extra}
        r = self.client.post("/api/v1/vms", json=body, params={"project": project},
                             headers=self.as_(who))
        return r.status_code


def make_world(tmp_path: Path, limiter: RateLimiter | None = None) -> Iterator[World]:
    home = fake_home(tmp_path, HOST)
    platform = fake_platform_with_quotas(home)
    ten = platform.tenancy
    for p in ("alpha", "beta"):
        ten.create_project(ProjectSpec(name=p))
    tokens = {}
    for user, role in (("admin", None), ("owner", Role.OWNER), ("member", Role.MEMBER),
                       ("viewer", Role.VIEWER), ("outsider", None)):
        ten.create_user(UserSpec(name=user, admin=user == "admin"))
        if role:
            ten.add_member("alpha", user, role)
        tokens[user] = ten.create_token(user).token
    ten.add_member("beta", "outsider", Role.MEMBER)
    kernel = fake_kernel(tmp_path, b"kernel")
    with api_client(platform, limiter=limiter) as client:
        yield World(client, ten, tokens, kernel, home.layout.db)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


# (who, method, path, body) -> expected status, for a VM "web" in project alpha.
TABLE = [
    ("list", "GET", "/api/v1/vms", None),
    ("show", "GET", "/api/v1/vms/web", None),
    ("create", "POST", "/api/v1/vms", "new"),
    ("operate", "POST", "/api/v1/vms/web/pause", None),   # authorized -> 409 (it is stopped)
    ("delete", "DELETE", "/api/v1/vms/web", None),
    ("manage", "PUT", "/api/v1/projects/alpha/members/viewer", {"role": "viewer"}),
    ("quota", "PUT", "/api/v1/projects/alpha/quota", {"vms": 10}),
    ("audit", "GET", "/api/v1/audit", None),               # with ?project=alpha
]
EXPECT = {
    #           list show create operate delete manage quota audit
    "admin":    (200, 200, 201, 409, 204, 200, 200, 200),
    "owner":    (200, 200, 201, 409, 204, 200, 403, 200),   # owners read their project's audit
    "member":   (200, 200, 201, 409, 204, 403, 403, 403),
    "viewer":   (200, 200, 403, 403, 403, 403, 403, 403),
    "outsider": (403, 403, 403, 403, 403, 403, 403, 403),
}


@pytest.mark.parametrize("who", list(EXPECT))
def test_role_table_both_ways(world: World, who: str) -> None:
    for (action, method, path, body), expected in zip(TABLE, EXPECT[who], strict=True):
        assert world.vm("web", "alpha") in (201, 409)
        json_body = {"name": "new-" + who, "kernel": world.kernel} if body == "new" else body
        r = world.client.request(method, path, json=json_body, params={"project": "alpha"},
                                 headers=world.as_(who))
        assert r.status_code == expected, (who, action, r.status_code, r.text)
        assert r.status_code == 204 or r.headers["content-type"].startswith("application/json")


def test_token_for_project_a_cannot_touch_project_b(world: World) -> None:
    assert world.vm("secret", "beta") == 201
    vm_id = world.client.get("/api/v1/vms/secret", params={"project": "beta"},
                             headers=world.as_("admin")).json()["id"]
    member = world.as_("member")
    # naming project beta: no role there
    r = world.client.post("/api/v1/vms/secret/pause", params={"project": "beta"}, headers=member)
    assert r.status_code == 403 and "no role in project 'beta'" in r.json()["message"]
    # by name or by id from inside alpha: it does not exist there
    for ref in ("secret", vm_id):
        r = world.client.post(f"/api/v1/vms/{ref}/pause", headers=member)
        assert r.status_code == 404
    assert [v["name"] for v in world.client.get("/api/v1/vms", headers=member).json()] == []


def test_default_project_is_the_only_one(world: World) -> None:
    assert world.vm("mine", "alpha") == 201
    r = world.client.get("/api/v1/vms", headers=world.as_("viewer"))
    assert [v["name"] for v in r.json()] == ["mine"]


def test_bad_tokens_are_401(world: World) -> None:
    for header in ({}, {"Authorization": "Bearer nope"},
                   {"Authorization": "Bearer kasou_abc_def"},
                   {"Authorization": world.as_("member")["Authorization"] + "x"}):
        r = world.client.get("/api/v1/vms", headers=header)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_expired_and_revoked_tokens(world: World) -> None:
    short = world.tenancy.create_token("member", expires_days=1 / 86400 / 2)  # half a second
    time.sleep(0.7)
    r = world.client.get("/api/v1/vms", headers={"Authorization": f"Bearer {short.token}"})
    assert r.status_code == 401 and "expired" in r.json()["message"]
    headers = world.as_("member")
    assert world.client.get("/api/v1/vms", headers=headers).status_code == 200
    tid = world.tokens["member"].split("_")[1]
    assert world.client.delete(f"/api/v1/tokens/{tid}", headers=headers).status_code == 204
    r = world.client.get("/api/v1/vms", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_tokens_are_stored_hashed(world: World) -> None:
    secret = world.tokens["member"].split("_", 2)[2]
    dump = "\n".join(sqlite3.connect(world.db).iterdump())
    assert secret not in dump and "scrypt$" in dump


def test_quota_exceeded_by_one(world: World) -> None:
    world.tenancy.set_quota("alpha", Quota(memory_mib=512, vms=3))
    assert world.vm("a", "alpha", memory="256M") == 201
    assert world.vm("b", "alpha", memory="256M") == 201
    r = world.client.post("/api/v1/vms", json={"name": "c", "kernel": world.kernel,
                                               "memory": "16M"},
                          params={"project": "alpha"}, headers=world.as_("member"))
    assert r.status_code == 403 and r.json()["error"] == "quota_exceeded"
    assert "memory_mib: 512 used + 16 asked > 512 allowed" in r.json()["message"]
    show = world.client.get("/api/v1/projects/alpha", headers=world.as_("owner")).json()
    assert show["usage"] == {"vms": 2, "vcpus": 2, "memory_mib": 512, "forwards": 0}


def test_racing_creates_for_the_last_quota_unit(world: World) -> None:
    world.tenancy.set_quota("alpha", Quota(vms=1))
    codes: list[int] = []
    barrier = threading.Barrier(5)

    def create(i: int) -> None:
        barrier.wait()
        codes.append(world.vm(f"r{i}", "alpha", who="member"))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201, 403, 403, 403, 403]


def test_crafted_names_are_refused(world: World) -> None:
    h = world.as_("admin")
    assert world.client.get("/api/v1/vms", params={"project": "../../etc"},
                            headers=h).status_code == 422
    r = world.client.post("/api/v1/projects", json={"name": "../x"}, headers=h)
    assert r.status_code == 422 and r.json()["field"] == "name"
    assert world.vm("../../etc/passwd", "alpha") == 422
    assert world.client.get("/api/v1/vms/..%2F..%2Fetc", headers=h).status_code == 404


def test_oversized_body_is_413(world: World) -> None:
    r = world.client.post("/api/v1/vms", content=b"x" * (2 << 20),
                          headers={**world.as_("admin"), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_rate_limit_is_429_per_token(tmp_path: Path) -> None:
    for w in make_world(tmp_path, RateLimiter(rate=0.5, burst=3)):
        codes = [w.client.get("/api/v1/vms", headers=w.as_("member")).status_code
                 for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = w.client.get("/api/v1/vms", headers=w.as_("member"))
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        # another token has its own bucket
        assert w.client.get("/api/v1/vms", headers=w.as_("viewer")).status_code == 200


def test_audit_records_changes_and_refusals_and_detects_edits(world: World) -> None:
    world.vm("a1", "alpha", who="member")
    world.client.post("/api/v1/vms/a1/pause", params={"project": "alpha"},
                      headers=world.as_("viewer"))
    world.client.get("/api/v1/vms", headers={"Authorization": "Bearer forged"})
    log = world.client.get("/api/v1/audit", headers=world.as_("admin")).json()
    actions = [(e["actor"], e["action"], e["status"]) for e in log]
    assert ("member", "POST /api/v1/vms", 201) in actions
    assert ("viewer", "POST /api/v1/vms/{name}/pause", 403) in actions
    assert ("anonymous", "GET /api/v1/vms", 401) in actions
    assert all(e["source"] for e in log)
    ok = world.client.get("/api/v1/audit/verify", headers=world.as_("admin")).json()
    assert ok["ok"] is True
    db = sqlite3.connect(world.db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET actor = 'someone' WHERE seq = 1")
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET actor = 'someone' WHERE seq = 1")
    db.commit()
    bad = world.client.get("/api/v1/audit/verify", headers=world.as_("admin")).json()
    assert bad["ok"] is False and bad["first_bad_seq"] == 1


def test_public_forwards_count_against_the_quota(world: World) -> None:
    from kasou.tenancy.hook import public_forwards

    assert public_forwards(["2222:22", "127.0.0.1:8080:80", "0.0.0.0:8443:443/tcp",
                            "[::]:53:53/udp"]) == 2
    world.tenancy.set_quota("alpha", Quota(forwards=1))
    assert world.vm("f1", "alpha", forwards=["0.0.0.0:18080:80"]) == 201
    assert world.vm("f2", "alpha", forwards=["2223:22"]) == 201        # loopback: not public
    r = world.client.post("/api/v1/vms", json={"name": "f3", "kernel": world.kernel,
                                               "forwards": ["0.0.0.0:18081:80"]},
                          params={"project": "alpha"}, headers=world.as_("member"))
    assert r.status_code == 403 and "forwards: 1 used + 1 asked > 1" in r.json()["message"]
