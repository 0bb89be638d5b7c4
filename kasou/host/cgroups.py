"""Control groups: one interface for per-VM CPU, memory and I/O controls, with a backend for
cgroup v1 (separate hierarchies per controller, as on this project's hosts) and one for v2
(the unified tree of most modern hosts). `detect()` picks one from /proc/self/mounts.

    Cgroups                   what kasou asks of a cgroup, in the v2 vocabulary
    ├── CgroupsV1             cpu (+cpuacct), cpuset, memory, blkio hierarchies
    └── CgroupsV2             one unified tree, controllers enabled top-down

Each VM gets a group named after its id under kasou's own subtree:
- v1: `<controller mount>/<the daemon's own cgroup>/kasou/<group>`, so a limit put on the
  daemon's cgroup (a container, a service slice) still holds for its VMs;
- v2: `<mount>/kasou/<group>` at the top of the tree, because v2 does not let a cgroup
  that holds processes (the daemon's own) hand controllers to children.

The units are v2's everywhere: CPU weight 1..10000 (default 100), I/O weight 1..1000
(BFQ's range, default 100); the v1 backend converts (cpu.shares = weight × 1024 / 100).
Backends take their roots as paths, so unit tests run them over a fake tree in tmp_path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from kasou.errors import EngineError

__all__ = [
    "CPU_PERIOD_US",
    "Cgroups",
    "CgroupsV1",
    "CgroupsV2",
    "detect",
    "format_cpu_list",
    "parse_cpu_list",
]

CPU_PERIOD_US = 100_000      # CFS period: a 25% limit is 25 ms of CPU per 100 ms
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "blkio")
V2_CONTROLLERS = ("cpu", "cpuset", "memory", "io")
SUBTREE = "kasou"
V1_UNLIMITED = "-1"


def parse_cpu_list(text: str) -> frozenset[int]:
    """'0-2,5' -> {0, 1, 2, 5} (the kernel's list format); ValueError on anything else."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"{part!r} is a backwards range")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> '0-2,5'."""
    ordered = sorted(set(cpus))
    runs: list[str] = []
    start = prev = None
    for cpu in [*ordered, None]:
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(runs)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    try:
        with path.open("w") as f:
            f.write(value)
    except OSError as e:
        raise EngineError(f"cannot write {value!r} to {path}: {e.strerror or e}") from e


def _optional_write(path: Path, value: str) -> bool:
    """For knobs a kernel may lack (BFQ weights): False when the file is not there."""
    if not path.exists():
        return False
    _write(path, value)
    return True


def _subdirs(base: Path) -> dict[str, float]:
    now = time.time()
    try:
        return {d.name: now - d.stat().st_mtime for d in base.iterdir() if d.is_dir()}
    except OSError:
        return {}


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise EngineError(f"cgroup {path} still has processes") from e
        raise EngineError(f"cannot remove cgroup {path}: {e.strerror or e}") from e


class Cgroups(ABC):
    """A per-VM cgroup: create it, move a process (every thread) in, set limits, read use."""

    version: Literal["v1", "v2"]

    @abstractmethod
    def create(self, group: str) -> None: ...

    @abstractmethod
    def attach(self, group: str, pid: int) -> None:
        """Move the whole process (all its threads) into the group."""

    @abstractmethod
    def remove(self, group: str) -> None: ...

    @abstractmethod
    def exists(self, group: str) -> bool: ...

    @abstractmethod
    def procs(self, group: str) -> list[int]: ...

    @abstractmethod
    def groups(self) -> dict[str, float]:
        """Every group in kasou's subtree, with its directory's age in seconds."""

    @abstractmethod
    def set_cpu_max(self, group: str, cores: float | None) -> None:
        """At most `cores` CPUs' worth of time per period; None lifts the limit."""

    @abstractmethod
    def set_cpu_weight(self, group: str, weight: int | None) -> None:
        """Relative share under contention, 1..10000 (None: the default, 100)."""

    @abstractmethod
    def set_cpus(self, group: str, cpus: frozenset[int] | None) -> None:
        """Pin to these host CPUs; None: every CPU kasou may use."""

    @abstractmethod
    def set_memory_max(self, group: str, limit: int | None) -> None:
        """Hard limit in bytes (the OOM killer acts beyond it); None lifts it."""

    @abstractmethod
    def set_io_weight(self, group: str, weight: int | None) -> bool:
        """Relative I/O share, 1..1000; False when the kernel has no weight knob here."""

    @abstractmethod
    def available_cpus(self) -> frozenset[int]:
        """The CPUs kasou's subtree may use."""

    @abstractmethod
    def cpu_usage_ns(self, group: str) -> int | None: ...

    @abstractmethod
    def memory_current(self, group: str) -> int | None: ...

    @abstractmethod
    def paths(self, group: str) -> dict[str, str]:
        """Where the group lives, per controller (for `kasou vm show`)."""


# --- v1 --------------------------------------------------------------------------------------

class CgroupsV1(Cgroups):
    """One directory per controller hierarchy; `bases` maps controller -> kasou's subtree."""

    version: Literal["v1", "v2"] = "v1"

    def __init__(self, bases: dict[str, Path]) -> None:
        missing = [c for c in ("cpu", "memory") if c not in bases]
        if missing:
            raise EngineError(f"cgroup v1 controllers missing: {', '.join(missing)}")
        self.bases = bases

    def _dir(self, controller: str, group: str) -> Path | None:
        base = self.bases.get(controller)
        return base / group if base is not None else None

    def _dirs(self, group: str) -> list[Path]:
        # cpu and cpuacct are often one hierarchy ("cpu,cpuacct"): each directory once.
        seen: dict[Path, None] = {}
        for controller in self.bases:
            d = self._dir(controller, group)
            if d is not None:
                seen.setdefault(d, None)
        return list(seen)

    def create(self, group: str) -> None:
        for controller, base in self.bases.items():
            for d in (base, base / group):
                d.mkdir(exist_ok=True)
                if controller == "cpuset":
                    self._inherit_cpuset(d)
        mem = self._dir("memory", group)
        if mem is not None:
            # Charges made before the move (QEMU's first allocations) follow the process;
            # without this they stay on the daemon's cgroup. Gone from cgroup v1 in some
            # kernels: then the limit simply counts from the move on.
            with contextlib.suppress(EngineError):
                _optional_write(mem / "memory.move_charge_at_immigrate", "3")

    @staticmethod
    def _inherit_cpuset(d: Path) -> None:
        """A v1 cpuset accepts no task until its cpus and mems are set: take the parent's."""
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if not _read(d / knob).strip():
                _write(d / knob, _read(d.parent / knob).strip())

    def attach(self, group: str, pid: int) -> None:
        for d in self._dirs(group):
            _write(d / "cgroup.procs", str(pid))

    def remove(self, group: str) -> None:
        for d in self._dirs(group):
            _rmdir(d)

    def exists(self, group: str) -> bool:
        d = self._dir("cpu", group)
        return d is not None and d.is_dir()

    def procs(self, group: str) -> list[int]:
        d = self._dir("cpu", group)
        text = _read(d / "cgroup.procs") if d else ""
        return [int(p) for p in text.split()]

    def groups(self) -> dict[str, float]:
        return _subdirs(self.bases["cpu"])

    def set_cpu_max(self, group: str, cores: float | None) -> None:
        d = self._dir("cpu", group)
        assert d is not None
        _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = V1_UNLIMITED if cores is None else str(round(cores * CPU_PERIOD_US))
        _write(d / "cpu.cfs_quota_us", quota)

    def set_cpu_weight(self, group: str, weight: int | None) -> None:
        d = self._dir("cpu", group)
        assert d is not None
        _write(d / "cpu.shares", str(max(2, round((weight or 100) * 1024 / 100))))

    def set_cpus(self, group: str, cpus: frozenset[int] | None) -> None:
        d = self._dir("cpuset", group)
        if d is None:
            if cpus is None:
                return
            raise EngineError("pinning needs the cpuset cgroup controller, which is not mounted")
        value = format_cpu_list(cpus) if cpus is not None else _read(d.parent / "cpuset.cpus")
        _write(d / "cpuset.cpus", value.strip())

    def set_memory_max(self, group: str, limit: int | None) -> None:
        d = self._dir("memory", group)
        assert d is not None
        _write(d / "memory.limit_in_bytes", V1_UNLIMITED if limit is None else str(limit))

    def set_io_weight(self, group: str, weight: int | None) -> bool:
        d = self._dir("blkio", group)
        if d is None:
            return False
        value = str(weight or 100)
        # BFQ's knob on current kernels; CFQ's blkio.weight on old ones.
        return _optional_write(d / "blkio.bfq.weight", value) or \
            _optional_write(d / "blkio.weight", str(max(10, weight or 100)))

    def available_cpus(self) -> frozenset[int]:
        base = self.bases.get("cpuset")
        if base is None:
            return frozenset(os.sched_getaffinity(0))
        text = _read(base / "cpuset.effective_cpus") or _read(base / "cpuset.cpus") or \
            _read(base.parent / "cpuset.effective_cpus") or _read(base.parent / "cpuset.cpus")
        return parse_cpu_list(text)

    def cpu_usage_ns(self, group: str) -> int | None:
        d = self._dir("cpuacct", group)
        text = _read(d / "cpuacct.usage").strip() if d else ""
        return int(text) if text.isdigit() else None

    def memory_current(self, group: str) -> int | None:
        d = self._dir("memory", group)
        text = _read(d / "memory.usage_in_bytes").strip() if d else ""
        return int(text) if text.isdigit() else None

    def paths(self, group: str) -> dict[str, str]:
        return {c: str(b / group) for c, b in self.bases.items()}


# --- v2 --------------------------------------------------------------------------------------

class CgroupsV2(Cgroups):
    """The unified tree; `base` is kasou's subtree (e.g. /sys/fs/cgroup/kasou)."""

    version: Literal["v1", "v2"] = "v2"

    def __init__(self, base: Path, mount: Path) -> None:
        self.base = base
        self.mount = mount

    def _enable_controllers(self) -> None:
        """A controller works in a group only when every ancestor lists it in
        cgroup.subtree_control; enable the ones the root offers, top-down."""
        offered = set(_read(self.mount / "cgroup.controllers").split())
        wanted = [c for c in V2_CONTROLLERS if c in offered]
        parts = self.base.relative_to(self.mount).parts
        chain = [self.mount / Path(*parts[:i]) for i in range(len(parts) + 1)]
        for d in chain:
            d.mkdir(exist_ok=True)
            enabled = set(_read(d / "cgroup.subtree_control").split())
            todo = [c for c in wanted if c not in enabled]
            if todo:
                _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))

    def create(self, group: str) -> None:
        self._enable_controllers()
        (self.base / group).mkdir(exist_ok=True)

    def attach(self, group: str, pid: int) -> None:
        _write(self.base / group / "cgroup.procs", str(pid))

    def remove(self, group: str) -> None:
        _rmdir(self.base / group)

    def exists(self, group: str) -> bool:
        return (self.base / group).is_dir()

    def procs(self, group: str) -> list[int]:
        return [int(p) for p in _read(self.base / group / "cgroup.procs").split()]

    def groups(self) -> dict[str, float]:
        return _subdirs(self.base)

    def set_cpu_max(self, group: str, cores: float | None) -> None:
        quota = "max" if cores is None else str(round(cores * CPU_PERIOD_US))
        _write(self.base / group / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def set_cpu_weight(self, group: str, weight: int | None) -> None:
        _write(self.base / group / "cpu.weight", str(weight or 100))

    def set_cpus(self, group: str, cpus: frozenset[int] | None) -> None:
        # An empty cpuset.cpus means "the parent's CPUs" in v2.
        _write(self.base / group / "cpuset.cpus", format_cpu_list(cpus) if cpus else "")

    def set_memory_max(self, group: str, limit: int | None) -> None:
        _write(self.base / group / "memory.max", "max" if limit is None else str(limit))

    def set_io_weight(self, group: str, weight: int | None) -> bool:
        d = self.base / group
        value = weight or 100
        bfq = _optional_write(d / "io.bfq.weight", str(value))
        iocost = _optional_write(d / "io.weight", f"default {value}")
        return bfq or iocost

    def available_cpus(self) -> frozenset[int]:
        for d in (self.base, self.mount):
            text = _read(d / "cpuset.cpus.effective").strip()
            if text:
                return parse_cpu_list(text)
        return frozenset(os.sched_getaffinity(0))

    def cpu_usage_ns(self, group: str) -> int | None:
        for line in _read(self.base / group / "cpu.stat").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec" and value.strip().isdigit():
                return int(value) * 1000
        return None

    def memory_current(self, group: str) -> int | None:
        text = _read(self.base / group / "memory.current").strip()
        return int(text) if text.isdigit() else None

    def paths(self, group: str) -> dict[str, str]:
        return {"unified": str(self.base / group)}


# --- detection -------------------------------------------------------------------------------

def _v1_mounts(mounts: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != "cgroup":
            continue
        for option in fields[3].split(","):
            if option in V1_CONTROLLERS:
                out.setdefault(option, Path(fields[1]))
    return out


def _v2_mount(mounts: str) -> Path | None:
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _own_paths(self_cgroup: str) -> dict[str, str]:
    """/proc/self/cgroup lines 'N:ctrl,ctrl:/path' -> {ctrl: path}; v2's line is '0::/path'
    and comes back under the key ''."""
    out: dict[str, str] = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(",") if parts[1] else [""]:
            out[ctrl] = parts[2]
    return out


def detect(mounts: str | None = None, self_cgroup: str | None = None,
           subtree: str = SUBTREE) -> Cgroups | None:
    """The backend for this host, or None when no usable cgroup controllers are mounted.
    A hybrid host (v1 controllers plus an empty v2 tree) uses v1, where the controllers are."""
    mounts = _read(Path("/proc/self/mounts")) if mounts is None else mounts
    self_cgroup = _read(Path("/proc/self/cgroup")) if self_cgroup is None else self_cgroup
    own = _own_paths(self_cgroup)
    v1 = _v1_mounts(mounts)
    if "cpu" in v1 and "memory" in v1:
        bases = {c: m / own.get(c, "/").lstrip("/") / subtree for c, m in v1.items()}
        return CgroupsV1(bases)
    mount = _v2_mount(mounts)
    if mount is not None and "cpu" in _read(mount / "cgroup.controllers").split():
        return CgroupsV2(mount / subtree, mount)
    return None
