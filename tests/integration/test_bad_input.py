"""Bad input through the real CLI and API: a clear error naming the field, nothing created."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kasou.cli.client import ApiError, Client
from kasou.paths import Layout
from tests.integration.conftest import Kasou

CASES = [
    (["--memory", "0"], "memory"),
    (["--memory", "-1G"], "memory"),
    (["--memory", "lots"], "memory"),
    (["--vcpus", "0"], "vcpus"),
    (["--vcpus", "5000"], "vcpus"),
    (["--machine", "vax"], "machine"),
    (["--kernel", "/nonexistent/vmlinuz"], "kernel"),
    (["--disk", "/nonexistent/disk.qcow2", "--machine", "pc"], "disks"),
    (["--image", "nosuchimage"], "image"),
]


@pytest.mark.parametrize(("args", "field"), CASES)
def test_bad_create_is_refused_and_creates_nothing(shared_kasou: Kasou, args: list[str],
                                                   field: str) -> None:
    kasou = shared_kasou
    base = [] if "--image" in args or "--kernel" in args else ["--image", "tiny"]
    r = kasou.run("vm", "create", "bad", *base, *args, check=False)
    assert r.returncode != 0
    assert field in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert kasou.json("vm", "list") == []
    assert list((kasou.home / "vms").iterdir()) == []


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 64, "semi;colon"])
def test_unsafe_names_are_refused(shared_kasou: Kasou, name: str) -> None:
    kasou = shared_kasou
    r = kasou.run("vm", "create", name, "--image", "tiny", check=False)
    assert r.returncode != 0 and "name" in r.stderr and "Traceback" not in r.stderr
    assert kasou.json("vm", "list") == []
    assert not (kasou.home.parent / "escape").exists()


def test_duplicate_name(kasou: Kasou) -> None:
    kasou.run("vm", "create", "dup", "--image", "tiny")
    r = kasou.run("vm", "create", "dup", "--image", "tiny", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    assert len(kasou.json("vm", "list")) == 1


def test_unknown_field_through_the_api(kasou: Kasou) -> None:
    client = Client(Layout(kasou.home))
    with pytest.raises(ApiError) as exc:
        client.post("/vms", {"name": "u", "image": "tiny", "colour": "red"})
    assert exc.value.status == 422
    assert exc.value.body["field"] == "colour"
    assert exc.value.body["message"] == "colour: unknown field"


def test_concurrent_creates_one_wins(kasou: Kasou) -> None:
    client = Client(Layout(kasou.home))
    outcomes: list[int] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        barrier.wait()
        try:
            client.post("/vms", {"name": "race", "image": "tiny"})
            outcomes.append(201)
        except ApiError as e:
            outcomes.append(e.status)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [201] + [409] * 5
    assert len(list((kasou.home / "vms").iterdir())) == 1


def test_start_that_does_not_fit_is_refused_before_any_process(kasou: Kasou) -> None:
    kasou.run("vm", "create", "huge", "--image", "tiny", "--memory", "200G")
    r = kasou.run("vm", "start", "huge", check=False)
    assert r.returncode == 1
    assert "memory" in r.stderr and "MiB" in r.stderr, r.stderr
    vm = kasou.vm("huge")
    assert vm["state"] == "stopped" and vm["pid"] is None
    assert kasou.qemu_pids() == []
    kasou.run("vm", "create", "wide", "--image", "tiny", "--vcpus", "64")
    r = kasou.run("vm", "start", "wide", check=False)
    assert r.returncode == 1 and "vCPU" in r.stderr, r.stderr


def test_unknown_vm(kasou: Kasou) -> None:
    r = kasou.run("vm", "start", "ghost", check=False)
    assert r.returncode == 1 and "no VM named 'ghost'" in r.stderr


def test_missing_file_checked_again_at_start(kasou: Kasou, tmp_path: Path) -> None:
    disk = tmp_path / "gone.raw"
    disk.write_bytes(bytes(1 << 20))
    kasou.run("vm", "create", "g", "--image", "tiny", "--machine", "pc", "--disk", str(disk))
    disk.unlink()
    r = kasou.run("vm", "start", "g", check=False)
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert kasou.vm("g")["state"] == "stopped"
