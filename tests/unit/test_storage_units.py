"""Pure parts of storage: limits, sizes, names, content sniffing, qemu-img JSON, the VM
spec's storage fields and the suspend states of the lifecycle."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kasou.errors import InvalidSpec, InvalidState
from kasou.spec import parse_spec
from kasou.state import ACTIONS, LIVE, TRANSITIONS, VMState, can_move, check
from kasou.storage import sniff
from kasou.storage.core import check_snapshot_name
from kasou.storage.imports import ImportRequest
from kasou.storage.models import Limits
from kasou.storage.qemu_img import parse_check, parse_info
from kasou.storage.volumes import parse_bytes

S = VMState


def test_limits_are_sent_in_full_so_dropped_ones_are_lifted() -> None:
    limits = Limits(iops_total=100, bps_read=1 << 20)
    assert limits.qemu() == {"iops-total": 100, "iops-read": 0, "iops-write": 0,
                             "bps-total": 0, "bps-read": 1 << 20, "bps-write": 0}
    assert limits.is_set() and not Limits().is_set()


@pytest.mark.parametrize("bad", [{"iops_total": 10, "iops_read": 5},
                                 {"bps_total": 10, "bps_write": 5},
                                 {"iops_total": 0}, {"bps_read": -1},
                                 {"iops_total": 10**16}, {"iops": 3}])
def test_bad_limits_are_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValidationError):
        Limits.model_validate(bad)


@pytest.mark.parametrize(("value", "size"), [("4G", 4 << 30), ("512M", 512 << 20),
                                             (1048576, 1 << 20), ("1.5G", 3 << 29)])
def test_sizes(value: int | str, size: int) -> None:
    assert parse_bytes(value) == size


@pytest.mark.parametrize("value", ["0", 0, "-1G", "lots", "1000", 513])
def test_bad_sizes_name_the_field(value: int | str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_bytes(value)
    assert exc.value.field == "size"


@pytest.mark.parametrize("name", ["before-upgrade", "s1", "2026.11.26", "A_b"])
def test_snapshot_names(name: str) -> None:
    assert check_snapshot_name(name) == name


@pytest.mark.parametrize("name", ["", "12", "../x", "a/b", "-x", "x y", "a" * 64, ".hidden",
                                  "snap\n"])
def test_unsafe_snapshot_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        check_snapshot_name(name)
    assert exc.value.field == "snapshot"


def _at(offset: int, magic: bytes, size: int = 0x10048) -> bytes:
    head = bytearray(size)
    head[offset:offset + len(magic)] = magic
    return bytes(head)


@pytest.mark.parametrize(("head", "what"), [
    (_at(510, b"\x55\xaa"), "MBR"), (_at(512, b"EFI PART"), "GPT"),
    (_at(0x8001, b"CD001"), "ISO 9660"), (_at(0x438, b"\x53\xef"), "ext2/3/4"),
    (_at(0, b"XFSB"), "XFS"), (_at(0x10040, b"_BHRfS_M"), "btrfs"),
])
def test_disk_contents_are_recognised(head: bytes, what: str) -> None:
    assert what in (sniff.kind_of(head) or "")


@pytest.mark.parametrize("head", [b"", b"hello world\n" * 100, bytes(1 << 16),
                                  b"PK\x03\x04" + bytes(1000)])
def test_other_contents_are_not_disks(head: bytes) -> None:
    assert sniff.kind_of(head) is None


def test_parse_qemu_img_info() -> None:
    info = parse_info({
        "virtual-size": 2147483648, "filename": "/p/web.qcow2", "format": "qcow2",
        "actual-size": 200704, "backing-filename": "/p/debian.qcow2",
        "backing-filename-format": "qcow2",
        "snapshots": [{"id": "1", "name": "s1", "vm-state-size": 96000000,
                       "date-sec": 1700000000, "date-nsec": 0, "vm-clock-sec": 3,
                       "vm-clock-nsec": 0, "icount": -1}],
        "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": False}},
    })
    assert info.format == "qcow2" and info.virtual_size == 2 << 30
    assert info.backing == "/p/debian.qcow2" and info.snapshot_names() == {"s1"}
    assert not info.corrupt and info.extents == ()


def test_parse_qemu_img_check() -> None:
    truncated = parse_check({"image-end-offset": 4194304, "total-clusters": 1024,
                             "corruptions": 197, "check-errors": 0, "format": "qcow2"})
    assert truncated.damaged
    leaky = parse_check({"leaks": 3, "corruptions": 0, "check-errors": 0})
    assert not leaky.damaged


def test_import_request_checks_its_fields() -> None:
    ok = ImportRequest(name="debian", source="https://example.org/d.qcow2", sha256="A" * 64)
    assert ok.sha256 == "a" * 64
    for bad in ({"name": "../x", "source": "/x"}, {"name": "x", "source": "x.qcow2"},
                {"name": "x", "source": "ftp://h/x"}, {"name": "x", "source": "/x",
                                                       "sha256": "abc"}):
        with pytest.raises(ValidationError):
            ImportRequest.model_validate(bad)


def test_spec_storage_fields() -> None:
    spec = parse_spec({"name": "web", "template": "debian", "disk_size": "4G",
                       "volumes": ["data"]})
    assert spec.template == "debian" and spec.disk_size == 4096 and spec.volumes == ["data"]
    # a template or a volume alone is something to boot (firmware boots the disk)
    assert parse_spec({"name": "a", "template": "t"}).template == "t"
    assert parse_spec({"name": "a", "volumes": ["v"]}).volumes == ["v"]


@pytest.mark.parametrize(("data", "field"), [
    ({"name": "a", "image": "tiny", "full_clone": True}, "full_clone"),
    ({"name": "a", "template": "../etc"}, "template"),
    ({"name": "a", "template": "t", "volumes": ["v", "v"]}, "volumes"),
    ({"name": "a", "template": "t", "disk_size": "0"}, "disk_size"),
    ({"name": "a", "template": "t", "machine": "microvm"}, "machine"),
    ({"name": "a", "disk_size": "1G"}, "image"),
])
def test_bad_storage_specs_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        parse_spec(data)
    assert exc.value.field.startswith(field), exc.value.message


def test_suspend_states_in_the_lifecycle() -> None:
    assert check("a", S.RUNNING, "suspend") == S.SUSPENDING
    assert check("a", S.PAUSED, "suspend") == S.SUSPENDING
    assert check("a", S.SUSPENDED, "start") == S.STARTING
    assert check("a", S.SUSPENDED, "discard") == S.STOPPED
    assert check("a", S.SUSPENDED, "delete") is None
    for path in [(S.SUSPENDING, S.SUSPENDED), (S.SUSPENDING, S.RUNNING),
                 (S.SUSPENDED, S.STARTING), (S.STARTING, S.SUSPENDED)]:
        assert path in TRANSITIONS
    assert not can_move(S.SUSPENDED, S.RUNNING)      # only through a restore
    assert S.SUSPENDING in LIVE and S.SUSPENDED not in LIVE
    assert (S.SUSPENDING, S.CRASHED) in TRANSITIONS


@pytest.mark.parametrize(("state", "action"), [
    (S.STOPPED, "suspend"), (S.SUSPENDED, "suspend"), (S.RUNNING, "discard"),
    (S.SUSPENDED, "snapshot"), (S.SUSPENDED, "revert"), (S.SUSPENDED, "change disks of"),
    (S.STARTING, "snapshot"),
])
def test_storage_actions_refused_in_the_wrong_state(state: VMState, action: str) -> None:
    with pytest.raises(InvalidState) as exc:
        check("web", state, action)
    assert state.value in exc.value.message
    assert set(exc.value.needed) == {s.value for s in ACTIONS[action][0]}
