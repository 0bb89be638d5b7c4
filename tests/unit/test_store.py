import threading
from pathlib import Path

import pytest

from kasou.errors import Conflict, InvalidState, NotFound
from kasou.spec import parse_spec
from kasou.state import VMState
from kasou.store.base import VMRecord, now_iso
from kasou.store.sqlite import SQLiteStore


def rec(name: str, vm_id: str) -> VMRecord:
    ts = now_iso()
    return VMRecord(id=vm_id, name=name, spec=parse_spec({"name": name, "image": "tiny"}),
                    created_at=ts, updated_at=ts)


def test_round_trip_and_wal(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    store.create_vm(rec("a", "id1"))
    got = store.get_vm("a")
    assert got.id == "id1" and got.state == VMState.STOPPED and got.spec.image == "tiny"
    assert store.get_vm("id1").name == "a"
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    # A second connection (another process) sees the same data.
    assert SQLiteStore(tmp_path / "k.db").get_vm("a").id == "id1"


def test_duplicate_name_is_a_conflict(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    store.create_vm(rec("a", "id1"))
    with pytest.raises(Conflict, match="already exists"):
        store.create_vm(rec("a", "id2"))
    assert [r.id for r in store.list_vms()] == ["id1"]


def test_concurrent_creates_one_wins(tmp_path: Path) -> None:
    stores = [SQLiteStore(tmp_path / "k.db") for _ in range(8)]
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        try:
            stores[i].create_vm(rec("same", f"id{i}"))
            results.append("ok")
        except Conflict:
            results.append("conflict")

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["conflict"] * 7 + ["ok"]
    assert len(stores[0].list_vms()) == 1


def test_set_state_is_compare_and_set(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    store.create_vm(rec("a", "id1"))
    store.set_state("id1", VMState.STARTING, expect=frozenset({VMState.STOPPED}))
    with pytest.raises(InvalidState, match="starting"):
        store.set_state("id1", VMState.STARTING, expect=frozenset({VMState.STOPPED}))
    r = store.set_state("id1", VMState.CRASHED, "boom")
    assert r.state == VMState.CRASHED and r.reason == "boom"


def test_missing_vm(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "k.db")
    with pytest.raises(NotFound, match="nope"):
        store.get_vm("nope")
    store.create_vm(rec("a", "id1"))
    store.delete_vm("id1")
    assert store.list_vms() == []
