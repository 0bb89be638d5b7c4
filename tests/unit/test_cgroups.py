"""cgroups v1 and v2 backends over fake cgroupfs trees in tmp_path, and detection.

A real cgroupfs creates the knob files itself when a group is made; the fake trees are
plain directories, so these tests read back what kasou wrote. v2 is exercised only this
way here: the project's hosts run cgroup v1 (hybrid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kasou.errors import EngineError
from kasou.host.cgroups import (
    CgroupsV1,
    CgroupsV2,
    detect,
    format_cpu_list,
    parse_cpu_list,
)

HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
HYBRID_SELF = "4:memory:/process_api/abc\n3:cpuset:/\n1:cpu:/\n0::/\n"


def read(p: Path) -> str:
    return p.read_text().strip()


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}), ("0-2,5", {0, 1, 2, 5}), (" 1 , 3-4 ", {1, 3, 4}), ("", set()),
])
def test_cpu_lists_parse(text: str, cpus: set[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["x", "3-1", "1-", "-1", "0,a"])
def test_bad_cpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_cpu_lists_format_as_ranges() -> None:
    assert format_cpu_list({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8"
    assert format_cpu_list([3]) == "3"


def test_hybrid_host_uses_v1_nested_under_the_daemons_own_cgroups() -> None:
    cg = detect(HYBRID_MOUNTS, HYBRID_SELF)
    assert isinstance(cg, CgroupsV1)
    assert cg.bases["cpu"] == Path("/sys/fs/cgroup/cpu/kasou")
    assert cg.bases["memory"] == Path("/sys/fs/cgroup/memory/process_api/abc/kasou")
    assert cg.bases["blkio"] == Path("/sys/fs/cgroup/blkio/kasou")


def test_comounted_cpu_and_cpuacct_share_one_directory() -> None:
    mounts = ("cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
              "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    cg = detect(mounts, "")
    assert isinstance(cg, CgroupsV1)
    assert cg.bases["cpu"] == cg.bases["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct/kasou")


def test_unified_host_uses_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cg = detect(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n", "0::/system.slice/kasou.service\n")
    assert isinstance(cg, CgroupsV2)
    assert cg.base == tmp_path / "kasou"


def test_no_controllers_means_no_backend(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("pids\n")
    assert detect(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n", "0::/\n") is None
    assert detect("proc /proc proc rw 0 0\n", "") is None


@pytest.fixture
def v1(tmp_path: Path) -> CgroupsV1:
    bases = {}
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory", "blkio"):
        root = tmp_path / ctrl
        root.mkdir()
        bases[ctrl] = root / "kasou"
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    return CgroupsV1(bases)


def test_v1_group_takes_limits_then_the_process(v1: CgroupsV1, tmp_path: Path) -> None:
    v1.create("vm1")
    cpu = tmp_path / "cpu/kasou/vm1"
    # A v1 cpuset takes no task before its cpus and mems are set: both come from above.
    assert read(tmp_path / "cpuset/kasou/vm1/cpuset.cpus") == "0-3"
    assert read(tmp_path / "cpuset/kasou/vm1/cpuset.mems") == "0"
    v1.set_cpu_max("vm1", 0.25)
    assert read(cpu / "cpu.cfs_quota_us") == "25000"
    assert read(cpu / "cpu.cfs_period_us") == "100000"
    v1.set_cpu_max("vm1", None)
    assert read(cpu / "cpu.cfs_quota_us") == "-1"
    v1.set_cpu_weight("vm1", 300)
    assert read(cpu / "cpu.shares") == "3072"
    v1.set_cpu_weight("vm1", None)
    assert read(cpu / "cpu.shares") == "1024"
    v1.set_cpus("vm1", frozenset({1, 2}))
    assert read(tmp_path / "cpuset/kasou/vm1/cpuset.cpus") == "1-2"
    v1.set_memory_max("vm1", 384 << 20)
    assert read(tmp_path / "memory/kasou/vm1/memory.limit_in_bytes") == str(384 << 20)
    v1.attach("vm1", 4242)
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory", "blkio"):
        assert read(tmp_path / ctrl / "kasou/vm1/cgroup.procs") == "4242"
    assert v1.procs("vm1") == [4242]
    assert v1.available_cpus() == frozenset({0, 1, 2, 3})


def test_v1_io_weight_needs_a_weight_knob(v1: CgroupsV1, tmp_path: Path) -> None:
    v1.create("vm1")
    assert v1.set_io_weight("vm1", 200) is False      # no BFQ knob in the group
    (tmp_path / "blkio/kasou/vm1/blkio.bfq.weight").write_text("100\n")
    assert v1.set_io_weight("vm1", 200) is True
    assert read(tmp_path / "blkio/kasou/vm1/blkio.bfq.weight") == "200"


def test_v1_remove(v1: CgroupsV1, tmp_path: Path) -> None:
    v1.remove("never-made")              # nothing there: nothing to do
    v1.create("vm1")
    v1.set_cpu_max("vm1", 0.5)           # a file inside: rmdir fails, as on a busy group
    with pytest.raises(EngineError, match=r"cannot remove|still has"):
        v1.remove("vm1")
    for f in (tmp_path / "cpu/kasou/vm1").iterdir():
        f.unlink()
    for ctrl in ("cpuset", "memory"):
        for f in (tmp_path / ctrl / "kasou/vm1").iterdir():
            f.unlink()
    v1.remove("vm1")
    assert not (tmp_path / "cpu/kasou/vm1").exists()


@pytest.fixture
def v2(tmp_path: Path) -> CgroupsV2:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cpuset.cpus.effective").write_text("0-7\n")
    return CgroupsV2(tmp_path / "kasou", tmp_path)


def test_v2_enables_controllers_top_down(v2: CgroupsV2, tmp_path: Path) -> None:
    v2.create("vm1")
    assert read(tmp_path / "cgroup.subtree_control") == "+cpu +cpuset +memory +io"
    assert read(tmp_path / "kasou/cgroup.subtree_control") == "+cpu +cpuset +memory +io"
    assert (tmp_path / "kasou/vm1").is_dir()


def test_v2_knobs(v2: CgroupsV2, tmp_path: Path) -> None:
    v2.create("vm1")
    g = tmp_path / "kasou/vm1"
    v2.set_cpu_max("vm1", 1.5)
    assert read(g / "cpu.max") == "150000 100000"
    v2.set_cpu_max("vm1", None)
    assert read(g / "cpu.max") == "max 100000"
    v2.set_cpu_weight("vm1", 300)
    assert read(g / "cpu.weight") == "300"
    v2.set_cpus("vm1", frozenset({0}))
    assert read(g / "cpuset.cpus") == "0"
    v2.set_cpus("vm1", None)
    assert read(g / "cpuset.cpus") == ""
    v2.set_memory_max("vm1", 1 << 30)
    assert read(g / "memory.max") == str(1 << 30)
    v2.set_memory_max("vm1", None)
    assert read(g / "memory.max") == "max"
    (g / "io.weight").write_text("default 100\n")
    assert v2.set_io_weight("vm1", 50) is True
    assert read(g / "io.weight") == "default 50"
    v2.attach("vm1", 77)
    assert v2.procs("vm1") == [77]
    (g / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    assert v2.cpu_usage_ns("vm1") == 1_500_000
    assert v2.available_cpus() == frozenset(range(8))
    assert v2.paths("vm1") == {"unified": str(g)}


def test_groups_are_listed_with_their_age(v2: CgroupsV2) -> None:
    v2.create("vm1")
    v2.create("vm2")
    groups = v2.groups()
    assert set(groups) == {"vm1", "vm2"} and all(0 <= age < 60 for age in groups.values())
