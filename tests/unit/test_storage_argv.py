"""Golden and targeted tests of the volume-disk argv builders (kasou/storage/argv.py).

Regenerate after an intended change with
    KASOU_UPDATE_GOLDEN=1 pytest tests/unit/test_storage_argv.py
and review the diff: every line is one argument QEMU will get.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from kasou.errors import InvalidSpec
from kasou.storage import argv as sargv
from kasou.storage.argv import VolumeDisk

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
POOL = "/var/lib/kasou/pools/default/default"

ROOT = VolumeDisk(slot=0, path=f"{POOL}/web-disk.qcow2", format="qcow2", readonly=False,
                  serial="kasou-0123456789ab", bootindex=0, limits={},
                  backing=((f"{POOL}/debian.qcow2", "qcow2"), (f"{POOL}/base.raw", "raw")))
DATA = VolumeDisk(slot=1, path=f"{POOL}/data.raw", format="raw", readonly=False,
                  serial="kasou-ba9876543210", bootindex=None,
                  limits={"iops-total": 200, "bps-total": 10 << 20})
ISO = VolumeDisk(slot=3, path=f"{POOL}/tools.raw", format="raw", readonly=True,
                 serial="kasou-00000000000f", bootindex=None, limits={})

CASES = {
    "storage-pc": ("pc", [ROOT, DATA, ISO]),
    "storage-q35": ("q35", [DATA, ROOT]),
    "storage-microvm": ("microvm", [DATA]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    machine, disks = CASES[case]
    got = "\n".join(sargv.volume_args(machine, disks)) + "\n"
    path = GOLDEN / f"{case}.argv"
    if os.environ.get("KASOU_UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert path.exists(), f"no golden file {path}; run with KASOU_UPDATE_GOLDEN=1"
    assert got == path.read_text()


def test_linked_clone_opens_its_chain_explicitly_read_only() -> None:
    nodes = sargv.blockdevs(ROOT)
    names = [n["node-name"] for n in nodes]
    # deepest template first, so each node's backing exists when it is added
    assert names == ["vol0-b2-file", "vol0-b2-fmt", "vol0-b1-file", "vol0-b1-fmt",
                     "vol0-file", "vol0-fmt", "vol0"]
    by_name = {n["node-name"]: n for n in nodes}
    assert by_name["vol0-fmt"]["backing"] == "vol0-b1-fmt"
    assert by_name["vol0-b1-fmt"]["backing"] == "vol0-b2-fmt"
    assert "backing" not in by_name["vol0-b2-fmt"]          # raw has no backing option
    for name in names[:4]:
        assert by_name[name]["read-only"] is True
    files = [n["filename"] for n in nodes if n["driver"] == "file"]
    assert files == [f"{POOL}/base.raw", f"{POOL}/debian.qcow2", f"{POOL}/web-disk.qcow2"]


def test_standalone_qcow2_never_follows_a_header_backing_path() -> None:
    disk = VolumeDisk(slot=2, path="/p/x.qcow2", format="qcow2", readonly=False,
                      serial="s", bootindex=None, limits={})
    fmt = next(n for n in sargv.blockdevs(disk) if n["node-name"] == "vol2-fmt")
    assert fmt["backing"] is None


def test_every_disk_has_a_throttle_node_and_group() -> None:
    args = sargv.volume_args("pc", [ISO])
    objects = [json.loads(a) for prev, a in itertools.pairwise(args)
               if prev == "-object"]
    assert objects == [{"qom-type": "throttle-group", "id": "vol3-tg"}]
    top = sargv.blockdevs(ISO)[-1]
    assert top["driver"] == "throttle" and top["throttle-group"] == "vol3-tg"
    assert all(n["read-only"] for n in sargv.blockdevs(ISO))
    assert all("discard" not in n for n in sargv.blockdevs(ISO))


def test_devices_sit_where_the_slot_says() -> None:
    assert sargv.device("pc", DATA)["addr"] == "0x11"
    assert sargv.device("pc", DATA)["bus"] == "pci.0"
    assert sargv.device("q35", DATA)["bus"] == "kasou-rp1"
    assert sargv.device("microvm", DATA)["driver"] == "virtio-blk-device"
    assert "bootindex" not in sargv.device("pc", DATA)
    assert sargv.device("pc", ROOT)["bootindex"] == 0


def test_q35_always_gets_every_root_port() -> None:
    ports = sargv.root_ports("q35")
    assert len(ports) == sargv.MAX_SLOTS["q35"]
    assert len({p["chassis"] for p in ports}) == len(ports)
    assert sargv.root_ports("pc") == [] and sargv.root_ports("microvm") == []
    # even with no disk at all: the device set must not depend on what is plugged
    assert sargv.volume_args("q35", []) != []


@pytest.mark.parametrize(("machine", "slot"), [("pc", 16), ("q35", 8), ("microvm", 4),
                                               ("pc", -1)])
def test_slots_beyond_the_machine_are_refused(machine: str, slot: int) -> None:
    with pytest.raises(InvalidSpec) as exc:
        sargv.check_slot(machine, slot)
    assert exc.value.field == "volumes"


def test_restore_args() -> None:
    assert sargv.restore_args("incoming") == ["-incoming", "defer"]
    assert sargv.restore_args("snapshot") == ["-S"]
    assert sargv.restore_args(None) == []
