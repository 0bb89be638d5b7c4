"""Pools, volumes, imports, templates and offline snapshots through the REST API, over a
real service, real SQLite and real qemu-img (no guest is booted here).

Every refusal is checked for what it promises: a 4xx naming the field, and nothing left
behind (no row, no file).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kasou.api.app import create_app
from kasou.api.routes import storage as storage_routes
from kasou.host.capacity import HostCapacity
from kasou.host.probe import HostInfo
from kasou.paths import Layout
from kasou.service.platform import Platform
from kasou.service.vms import VMService
from kasou.storage.models import Volume
from kasou.storage.service import StorageService
from kasou.store.base import now_iso
from kasou.store.sqlite import SQLiteStore
from kasou.store.tenancy import TenancyStore
from kasou.tenancy.models import Role, UserSpec
from kasou.tenancy.service import TenancyService

V1 = "/api/v1"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.layout = Layout(tmp / "home")
        self.layout.ensure()
        host = HostInfo(cores=2, memory_mib=4096, qemu_binary="qemu-system-x86_64",
                        qemu_version="7.2.0", machines={"microvm": 288, "pc": 255, "q35": 288},
                        accelerator="tcg", accelerator_reason="test", tsc_khz=None,
                        cgroup_version="v2", kernel_release="6.1")
        self.store = SQLiteStore(self.layout.db)
        self.storage = StorageService(self.layout, self.store)
        vms = VMService(self.layout, self.store, host, HostCapacity(2, 4096),
                        images_root=tmp / "images", hooks=[self.storage.hook])
        self.storage.bind(vms)
        self.platform = Platform(layout=self.layout, store=self.store, vms=vms,
                                 tenancy=TenancyService(TenancyStore(self.store)))
        self.platform.routers.append(storage_routes.router(self.storage))
        tenancy = self.platform.tenancy
        tenancy.create_user(UserSpec(name="root", admin=True))
        tenancy.create_user(UserSpec(name="alice"))
        tenancy.add_member("default", "alice", Role.MEMBER)
        self.root_token = tenancy.create_token("root").token
        self.alice_token = tenancy.create_token("alice").token
        self.kernel = tmp / "vmlinuz"
        self.kernel.write_bytes(b"never booted here")

    @property
    def pool_dir(self) -> Path:
        return self.layout.root / "pools" / "default" / "default"

    def files(self) -> list[str]:
        return sorted(p.name for p in self.pool_dir.iterdir()) if self.pool_dir.exists() else []


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def api(env: Env) -> Iterator[TestClient]:
    # TestClient connects as a TCP peer, so every request needs a token.
    with TestClient(create_app(env.platform),
                    headers={"Authorization": f"Bearer {env.root_token}"}) as client:
        yield client


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def refused(r: Any, status: int, field: str, words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body.get("field") == field, body
    assert words in body["message"], body["message"]
    return body


def qemu_img_info(path: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], check=True,
                         capture_output=True, text=True).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def write_pattern(path: str, fmt: str, pattern: int, offset: str = "0",
                  length: str = "1M") -> None:
    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {offset} {length}", path],
                   check=True, capture_output=True)


def reads_pattern(path: str, fmt: str, pattern: int, offset: str = "0",
                  length: str = "1M") -> bool:
    r = subprocess.run(["qemu-io", "-r", "-U", "-f", fmt, "-c",
                        f"read -P {pattern} {offset} {length}", path],
                       capture_output=True, text=True)
    return r.returncode == 0 and "Pattern verification failed" not in r.stdout


def vm(api: TestClient, env: Env, name: str, **spec: Any) -> dict[str, Any]:
    body = {"name": name, "kernel": str(env.kernel), "machine": "pc", **spec}
    result: dict[str, Any] = ok(api.post(f"{V1}/vms", json=body), 201)
    return result


# -- volumes -----------------------------------------------------------------------------
def test_create_show_resize_convert_delete(api: TestClient, env: Env) -> None:
    vol = ok(api.post(f"{V1}/volumes", json={"name": "data", "size": "64M"}), 201)
    assert vol["format"] == "qcow2" and vol["size"] == 64 << 20 and vol["state"] == "ready"
    assert qemu_img_info(vol["path"])["virtual-size"] == 64 << 20
    raw = ok(api.post(f"{V1}/volumes", json={"name": "scratch", "size": "8M",
                                             "format": "raw"}), 201)
    assert qemu_img_info(raw["path"])["format"] == "raw"
    assert [v["name"] for v in ok(api.get(f"{V1}/volumes"))] == ["data", "scratch"]
    assert ok(api.get(f"{V1}/pools"))[0]["volumes"] == 2

    # grow; shrinking without the flag is refused and changes nothing
    assert ok(api.post(f"{V1}/volumes/data/resize", json={"size": "128M"}))["size"] == 128 << 20
    refused(api.post(f"{V1}/volumes/data/resize", json={"size": "32M"}), 422, "size",
            "--shrink")
    assert qemu_img_info(vol["path"])["virtual-size"] == 128 << 20
    shrunk = ok(api.post(f"{V1}/volumes/data/resize", json={"size": "32M", "shrink": True}))
    assert shrunk["size"] == 32 << 20 == qemu_img_info(vol["path"])["virtual-size"]

    write_pattern(vol["path"], "qcow2", 0x5A)
    copy = ok(api.post(f"{V1}/volumes/data/convert", json={"name": "data-raw",
                                                          "format": "raw"}), 201)
    assert copy["format"] == "raw" and qemu_img_info(copy["path"])["format"] == "raw"
    assert reads_pattern(copy["path"], "raw", 0x5A)

    assert ok(api.delete(f"{V1}/volumes/data"), 204) is None
    assert not Path(vol["path"]).exists()
    refused(api.get(f"{V1}/volumes/data"), 404, "volume", "no volume named 'data'")


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "x", "size": "0"}, "size"), ({"name": "x", "size": "1000"}, "size"),
    ({"name": "x", "size": "lots"}, "size"), ({"name": "../x", "size": "1G"}, "name"),
    ({"name": "x", "size": "1G", "format": "vmdk"}, "format"),
    ({"name": "x", "size": "1G", "pool": "nope"}, "pool"),
])
def test_bad_volumes_are_refused_and_leave_nothing(api: TestClient, env: Env,
                                                   body: dict[str, Any], field: str) -> None:
    r = api.post(f"{V1}/volumes", json=body)
    assert r.status_code in (404, 422), r.text
    assert r.json()["field"] == field
    assert ok(api.get(f"{V1}/volumes")) == [] and env.files() == []


def test_name_taken_by_a_stray_file_is_not_overwritten(api: TestClient, env: Env) -> None:
    env.pool_dir.mkdir(parents=True)
    stray = env.pool_dir / "mine.qcow2"
    stray.write_bytes(b"someone's file")
    refused(api.post(f"{V1}/volumes", json={"name": "mine", "size": "1M"}), 409, "name",
            "not a volume kasou knows")
    assert stray.read_bytes() == b"someone's file"


# -- templates, clones and attachments -----------------------------------------------------
def test_linked_and_full_clones_of_a_template(api: TestClient, env: Env) -> None:
    base = ok(api.post(f"{V1}/volumes", json={"name": "base", "size": "64M"}), 201)
    write_pattern(base["path"], "qcow2", 0x42)
    refused(api.post(f"{V1}/vms", json={"name": "w0", "kernel": str(env.kernel),
                                        "template": "base"}), 422, "template",
            "is not a template")
    tpl = ok(api.post(f"{V1}/volumes/base/template", json={"template": True}))
    assert tpl["template"] and stat.S_IMODE(os.stat(base["path"]).st_mode) == 0o444

    vm(api, env, "web", template="base", disk_size="128M")
    clone = ok(api.get(f"{V1}/volumes/web-disk"))
    assert clone["backing"] == "base" and clone["owner_vm"] == "web"
    assert clone["size"] == 128 << 20 and clone["attached_to"] == ["web"]
    info = qemu_img_info(clone["path"])
    assert info["backing-filename"] == base["path"]
    assert reads_pattern(clone["path"], "qcow2", 0x42)      # sees the template's data
    write_pattern(clone["path"], "qcow2", 0x77)             # copy-on-write ...
    assert reads_pattern(base["path"], "qcow2", 0x42)       # ... the template is untouched

    vm(api, env, "db", template="base", full_clone=True)
    full = ok(api.get(f"{V1}/volumes/db-disk"))
    assert full["backing"] is None and "backing-filename" not in qemu_img_info(full["path"])
    assert reads_pattern(full["path"], "qcow2", 0x42)

    refused(api.delete(f"{V1}/volumes/base"), 409, "volume", "1 linked clone(s)")
    refused(api.post(f"{V1}/volumes/base/template", json={"template": False}), 409,
            "volume", "web-disk")
    refused(api.post(f"{V1}/volumes/base/resize", json={"size": "1G"}), 409, "volume",
            "is a template")
    refused(api.post(f"{V1}/vms/web/disks", json={"volume": "base"}), 409, "volume",
            "--from base")

    ok(api.delete(f"{V1}/vms/web"), 204)
    ok(api.delete(f"{V1}/vms/db"), 204)
    assert not Path(clone["path"]).exists() and not Path(full["path"]).exists()
    assert [v["name"] for v in ok(api.get(f"{V1}/volumes"))] == ["base"]
    ok(api.delete(f"{V1}/volumes/base"), 204)


def test_failed_vm_create_from_template_leaves_nothing(api: TestClient, env: Env) -> None:
    ok(api.post(f"{V1}/volumes", json={"name": "base", "size": "64M"}), 201)
    ok(api.post(f"{V1}/volumes/base/template", json={"template": True}))
    refused(api.post(f"{V1}/vms", json={"name": "small", "kernel": str(env.kernel),
                                        "template": "base", "disk_size": "32M"}),
            422, "disk_size", "smaller than template")
    refused(api.post(f"{V1}/vms", json={"name": "ghost", "kernel": str(env.kernel),
                                        "template": "nope"}), 404, "volume", "'nope'")
    ok(api.post(f"{V1}/volumes", json={"name": "taken-disk", "size": "1M"}), 201)
    refused(api.post(f"{V1}/vms", json={"name": "taken", "kernel": str(env.kernel),
                                        "template": "base"}), 409, "name", "taken-disk")
    assert ok(api.get(f"{V1}/vms")) == []
    assert sorted(v["name"] for v in ok(api.get(f"{V1}/volumes"))) == ["base", "taken-disk"]
    assert env.files() == ["base.qcow2", "taken-disk.qcow2"]


def test_attach_rules(api: TestClient, env: Env) -> None:
    ok(api.post(f"{V1}/volumes", json={"name": "shared", "size": "8M"}), 201)
    vm(api, env, "a", volumes=["shared"])
    vm(api, env, "b")
    refused(api.post(f"{V1}/vms/b/disks", json={"volume": "shared"}), 409, "volume",
            "written by one VM at a time")
    refused(api.post(f"{V1}/vms", json={"name": "c", "kernel": str(env.kernel),
                                        "volumes": ["shared"]}), 409, "volume",
            "attached (writable) to VM 'a'")
    refused(api.delete(f"{V1}/volumes/shared"), 409, "volume", "attached to VM a")
    ok(api.delete(f"{V1}/vms/a/disks/shared"), 204)
    # read-only users may share a volume, but then nobody may write it
    ok(api.post(f"{V1}/vms/b/disks", json={"volume": "shared", "readonly": True}), 201)
    ok(api.post(f"{V1}/vms/a/disks", json={"volume": "shared", "readonly": True}), 201)
    refused(api.post(f"{V1}/volumes/shared/template", json={"template": True}), 409,
            "volume", "detach it")
    disks = ok(api.get(f"{V1}/vms/a/disks"))
    assert [(d["volume"], d["readonly"], d["owned"]) for d in disks] == [("shared", True,
                                                                          False)]
    # a VM's deletion keeps volumes it did not make
    ok(api.delete(f"{V1}/vms/a"), 204)
    assert ok(api.get(f"{V1}/volumes/shared"))["attached_to"] == ["b"]

    limits = ok(api.put(f"{V1}/vms/b/disks/shared/limits", json={"iops_total": 50,
                                                                 "bps_read": 1 << 20}))
    assert limits["limits"]["iops_total"] == 50
    refused(api.put(f"{V1}/vms/b/disks/shared/limits", json={"iops_total": 5,
                                                             "iops_read": 1}),
            422, "body", "iops_total cannot be combined")


# -- imports -----------------------------------------------------------------------------
def _qcow2(tmp: Path, name: str, size: str = "16M", pattern: int = 0x33) -> Path:
    path = tmp / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    write_pattern(str(path), "qcow2", pattern, length="4M")
    return path


def test_import_local_files(api: TestClient, env: Env) -> None:
    good = _qcow2(env.tmp, "good.qcow2")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    vol = ok(api.post(f"{V1}/volumes/import", json={"name": "img", "source": str(good),
                                                    "sha256": digest}), 201)
    assert vol["format"] == "qcow2" and vol["size"] == 16 << 20 and vol["state"] == "ready"
    assert reads_pattern(vol["path"], "qcow2", 0x33, length="4M")
    iso = env.tmp / "tools.iso"
    iso.write_bytes(bytes(0x8001) + b"CD001" + bytes(64 * 1024))
    as_raw = ok(api.post(f"{V1}/volumes/import", json={"name": "tools", "source": str(iso),
                                                       "template": True}), 201)
    assert as_raw["format"] == "raw" and as_raw["template"]
    assert env.files() == ["img.qcow2", "tools.raw"]


def _refused_import(api: TestClient, env: Env, body: dict[str, Any], status: int, field: str,
                    words: str) -> None:
    before = env.files()
    refused(api.post(f"{V1}/volumes/import", json=body), status, field, words)
    assert env.files() == before, "a refused import left files behind"
    assert "x" not in [v["name"] for v in ok(api.get(f"{V1}/volumes"))]


def test_import_refuses_what_is_not_a_disk_image(api: TestClient, env: Env) -> None:
    text = env.tmp / "notes.txt"
    text.write_text("this is not a disk\n" * 1000)
    _refused_import(api, env, {"name": "x", "source": str(text)}, 422, "source",
                    "does not look like a disk image")
    truncated = _qcow2(env.tmp, "cut.qcow2")
    with truncated.open("r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    _refused_import(api, env, {"name": "x", "source": str(truncated)}, 422, "source",
                    "damaged or truncated")
    base = _qcow2(env.tmp, "base.qcow2")
    overlay = env.tmp / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(overlay)], check=True)
    _refused_import(api, env, {"name": "x", "source": str(overlay)}, 422, "source",
                    "has a backing file")
    _refused_import(api, env, {"name": "x", "source": str(base), "sha256": "0" * 64}, 422,
                    "sha256", "not " + "0" * 64)
    _refused_import(api, env, {"name": "x", "source": str(env.tmp / "missing.qcow2")}, 422,
                    "source", "not a file")


def test_only_administrators_import_host_files(env: Env) -> None:
    good = _qcow2(env.tmp, "good.qcow2")
    with TestClient(create_app(env.platform),
                    headers={"Authorization": f"Bearer {env.alice_token}"}) as alice:
        r = alice.post(f"{V1}/volumes/import", json={"name": "x", "source": str(good)})
        assert r.status_code == 403, r.text
        assert "http(s) URL" in r.json()["message"]
        ok(alice.post(f"{V1}/volumes", json={"name": "own", "size": "1M"}), 201)
        assert alice.post(f"{V1}/pools", json={"name": "p", "path": str(env.tmp)}
                          ).status_code == 403
    assert env.files() == ["own.qcow2"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args: Any, **kwargs: Any) -> _Quiet:
        return _Quiet(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_import_over_http(api: TestClient, env: Env, web: tuple[str, Path]) -> None:
    url, root = web
    image = _qcow2(root, "cloud.qcow2", pattern=0x21)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    vol = ok(api.post(f"{V1}/volumes/import", json={"name": "cloud", "sha256": digest,
                                                    "source": f"{url}/cloud.qcow2"}), 201)
    assert vol["source"] == f"{url}/cloud.qcow2" and vol["format"] == "qcow2"
    assert reads_pattern(vol["path"], "qcow2", 0x21, length="4M")
    as_raw = ok(api.post(f"{V1}/volumes/import", json={"name": "cloud-raw", "format": "raw",
                                                       "source": f"{url}/cloud.qcow2"}), 201)
    assert qemu_img_info(as_raw["path"])["format"] == "raw"
    _refused_import(api, env, {"name": "x", "source": f"{url}/missing.qcow2"}, 422, "source",
                    "HTTP 404")
    (root / "page.html").write_text("<html>not found, really</html>" * 50)
    _refused_import(api, env, {"name": "x", "source": f"{url}/page.html"}, 422, "source",
                    "does not look like a disk image")
    _refused_import(api, env, {"name": "x", "source": f"{url}/cloud.qcow2",
                               "sha256": "f" * 64}, 422, "sha256", "sha256 is " + digest)


def test_an_interrupted_import_is_cleaned_at_the_next_start(env: Env) -> None:
    pool = env.storage.core.store.pool("default")
    staging = env.storage.core.project_dir(pool, "default") / ".half.import"
    staging.write_bytes(b"partial download")
    env.storage.core.store.add_volume(Volume(
        id="abc123abc123", project="default", name="half", pool_id=pool.id,
        path=str(staging), format="raw", size=0, state="importing", source="http://x/y",
        created_at=now_iso()))
    StorageService(env.layout, env.store).bind(env.platform.vms)
    assert not staging.exists()
    assert env.storage.core.store.volumes("default") == []


# -- pools -------------------------------------------------------------------------------
def test_pools(api: TestClient, env: Env) -> None:
    where = env.tmp / "fast"
    pool = ok(api.post(f"{V1}/pools", json={"name": "fast", "path": str(where)}), 201)
    assert pool["path"] == str(where) and where.is_dir()
    vol = ok(api.post(f"{V1}/volumes", json={"name": "v", "size": "1M", "pool": "fast"}), 201)
    assert vol["pool"] == "fast" and vol["path"] == str(where / "default" / "v.qcow2")
    refused(api.delete(f"{V1}/pools/fast"), 409, "name", "still holds 1 volume")
    refused(api.post(f"{V1}/pools", json={"name": "inner", "path": str(where / "x")}), 409,
            "path", "overlaps pool 'fast'")
    refused(api.post(f"{V1}/pools", json={"name": "rel", "path": "relative/dir"}), 422,
            "path", "absolute")
    refused(api.delete(f"{V1}/pools/default"), 409, "name", "cannot be deleted")
    ok(api.delete(f"{V1}/volumes/v"), 204)
    ok(api.delete(f"{V1}/pools/fast"), 204)
    assert not where.exists()       # kasou made it, and it is empty: gone
    mine = env.tmp / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("the user's")
    ok(api.post(f"{V1}/pools", json={"name": "mine", "path": str(mine)}), 201)
    ok(api.delete(f"{V1}/pools/mine"), 204)
    assert (mine / "keep.txt").read_text() == "the user's"


# -- offline (disk-only) snapshots of a stopped VM ------------------------------------------
def test_offline_snapshots(api: TestClient, env: Env) -> None:
    vm(api, env, "web", disk_size="16M")
    disk = ok(api.get(f"{V1}/volumes/web-disk"))["path"]
    write_pattern(disk, "qcow2", 0x11)
    snap = ok(api.post(f"{V1}/vms/web/snapshots", json={"name": "clean"}), 201)
    assert snap["kind"] == "disk" and snap["volumes"] == ["web-disk"]
    assert [s["name"] for s in qemu_img_info(disk)["snapshots"]] == ["clean"]
    write_pattern(disk, "qcow2", 0x99)
    refused(api.post(f"{V1}/vms/web/snapshots", json={"name": "clean"}), 409, "snapshot",
            "already has")
    for bad in ("12", "../x", "a b", ""):
        r = api.post(f"{V1}/vms/web/snapshots", json={"name": bad})
        assert r.status_code == 422 and r.json()["field"] == "snapshot", r.text
    ok(api.post(f"{V1}/vms/web/snapshots/clean/revert"))
    assert reads_pattern(disk, "qcow2", 0x11)
    refused(api.post(f"{V1}/vms/web/snapshots/nope/revert"), 404, "snapshot", "clean")
    ok(api.delete(f"{V1}/vms/web/snapshots/clean"), 204)
    assert "snapshots" not in qemu_img_info(disk)
    assert ok(api.get(f"{V1}/vms/web/snapshots")) == []


def test_snapshots_refuse_disks_they_cannot_cover(api: TestClient, env: Env) -> None:
    user_disk = env.tmp / "user.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(user_disk), "8M"],
                   check=True)
    vm(api, env, "mixed", disk_size="8M", disks=[str(user_disk)])
    refused(api.post(f"{V1}/vms/mixed/snapshots", json={"name": "s"}), 409, "snapshot",
            "not kasou volumes")
    ok(api.post(f"{V1}/volumes", json={"name": "rawdata", "size": "8M", "format": "raw"}),
       201)
    vm(api, env, "rawvm", volumes=["rawdata"])
    refused(api.post(f"{V1}/vms/rawvm/snapshots", json={"name": "s"}), 409, "snapshot",
            "raw")
    vm(api, env, "bare")
    refused(api.post(f"{V1}/vms/bare/snapshots", json={"name": "s"}), 409, "snapshot",
            "no writable volume")
    assert "snapshots" not in qemu_img_info(str(user_disk))
