"""The isolation area's part in a VM's life: a cgroup per VM with its limits, the balloon
target, and (as root) the sandbox QEMU runs in.

started():    create the VM's cgroup, set its limits (memory: guest RAM + QEMU overhead),
              then move QEMU (all its threads) in; set the balloon target.
reattached(): the daemon restarted: find the cgroup again (or make it) and re-apply.
stopped():    QEMU is gone: remove the cgroup, revoke file grants made for the sandbox.
deleted():    forget the VM's limits.

Where a VM's cgroup lives is written to cgroup.json in its run dir, so a daemon started
from another cgroup (v1 nests kasou's tree under the daemon's own) still finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from kasou.engine import balloon
from kasou.engine.runtime import Runtime
from kasou.errors import EngineError, InvalidSpec, KasouError
from kasou.host.cgroups import Cgroups, CgroupsV1, CgroupsV2
from kasou.host.probe import HostInfo
from kasou.isolation import sandbox
from kasou.isolation.limits import (
    Limits,
    check_limits,
    memory_limit_bytes,
    target_floor_mib,
)
from kasou.paths import Layout
from kasou.service import resolve as rs
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.state import LIVE
from kasou.store.base import VMRecord
from kasou.store.isolation import LimitsStore

log = logging.getLogger(__name__)

CGROUP_FILE = "cgroup.json"


def save_cgroup(run_dir: Path, cg: Cgroups) -> None:
    if isinstance(cg, CgroupsV1):
        data: dict[str, Any] = {"version": "v1", "bases": {k: str(v) for k, v in cg.bases.items()}}
    else:
        assert isinstance(cg, CgroupsV2)
        data = {"version": "v2", "base": str(cg.base), "mount": str(cg.mount)}
    (run_dir / CGROUP_FILE).write_text(json.dumps(data))


def load_cgroup(run_dir: Path) -> Cgroups | None:
    try:
        data = json.loads((run_dir / CGROUP_FILE).read_text())
        if data["version"] == "v1":
            return CgroupsV1({k: Path(v) for k, v in data["bases"].items()})
        return CgroupsV2(Path(data["base"]), Path(data["mount"]))
    except (OSError, ValueError, KeyError, EngineError):
        return None


class IsolationHook(VMHook):
    name = "isolation"

    def __init__(self, layout: Layout, store: LimitsStore, cgroups: Cgroups | None,
                 host: HostInfo, images_root: Path | None = None,
                 sandboxed: bool = False) -> None:
        self.layout = layout
        self.store = store
        self.cgroups = cgroups
        self.host = host
        self.images_root = images_root
        self.sandboxed = sandboxed
        self._pending: set[asyncio.Task[None]] = set()

    # -- limits ------------------------------------------------------------------------------
    def effective(self, rec: VMRecord) -> Limits:
        return self.store.get(rec.id) or rec.spec.limits or Limits()

    def host_cpus(self) -> frozenset[int]:
        if self.cgroups is not None:
            return self.cgroups.available_cpus()
        return frozenset(os.sched_getaffinity(0))

    def check(self, rec: VMRecord, limits: Limits, prefix: str = "") -> None:
        image = None
        with contextlib.suppress(KasouError):
            image = rs.image_of(rec.spec, self.images_root)
        check_limits(limits, vcpus=rec.spec.vcpus, memory_mib=rec.spec.memory,
                     host_cpus=self.host_cpus(),
                     floor_mib=target_floor_mib(image.min_memory_mib if image else None),
                     prefix=prefix)
        needs = _needs_cgroups(limits)
        if self.cgroups is None and needs:
            field = f"{prefix}{needs}"
            raise InvalidSpec(f"{field}: kasou has no usable cgroup controllers here (it "
                              "needs root), so CPU, pinning and I/O limits cannot be applied",
                              field=field)

    def validate(self, rec: VMRecord) -> None:
        if rec.spec.limits is not None:
            self.check(rec, rec.spec.limits, prefix="limits.")

    # -- applying ----------------------------------------------------------------------------
    def apply_cgroup(self, cg: Cgroups, rec: VMRecord, limits: Limits, accel: str) -> None:
        """Limits first, then the move: QEMU is never inside an unlimited group."""
        group = rec.id
        cg.create(group)
        cg.set_memory_max(group, memory_limit_bytes(rec.spec.memory, accel))
        cg.set_cpu_max(group, limits.cpu_limit)
        cg.set_cpu_weight(group, limits.cpu_weight)
        cg.set_cpus(group, limits.cpus())
        cg.set_io_weight(group, limits.io_weight)

    async def apply_balloon(self, rec: VMRecord, limits: Limits, qmp: QMPClient) -> None:
        target = limits.memory_target or rec.spec.memory
        await balloon.set_target(qmp, target << 20)

    async def started(self, rec: VMRecord, rt: Runtime, qmp: QMPClient,
                      revert: Reverter) -> None:
        limits = self.effective(rec)
        run_dir = self.layout.vm_dir(rec.id)
        if self.cgroups is not None:
            cg = self.cgroups
            revert.add(lambda: self._remove_cgroup(cg, rec.id))
            self.apply_cgroup(cg, rec, limits, rt.accel)
            cg.attach(rec.id, rt.pid)
            save_cgroup(run_dir, cg)
        if limits.memory_target is not None:
            await self.apply_balloon(rec, limits, qmp)

    async def reattached(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        limits = self.effective(rec)
        run_dir = self.layout.vm_dir(rec.id)
        cg = load_cgroup(run_dir) or self.cgroups
        if cg is not None:
            self.apply_cgroup(cg, rec, limits, rt.accel)
            cg.attach(rec.id, rt.pid)
            save_cgroup(run_dir, cg)
        if limits.memory_target is not None:
            await self.apply_balloon(rec, limits, qmp)

    async def stopped(self, rec: VMRecord) -> None:
        run_dir = self.layout.vm_dir(rec.id)
        cg = load_cgroup(run_dir)
        if cg is not None:
            try:
                cg.remove(rec.id)
            except EngineError:
                # Not empty yet (QEMU not reaped): retry aside. Waiting here would hold up
                # the VM's move to `stopped`, which the service makes after every hook.
                task = asyncio.create_task(self._remove_when_empty(cg, rec.id))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        with contextlib.suppress(FileNotFoundError):
            (run_dir / CGROUP_FILE).unlink()
        state = sandbox.load_state(run_dir)
        if state is not None:
            sandbox.revoke_grants(state.uid, state.grants)
            with contextlib.suppress(FileNotFoundError):
                (run_dir / sandbox.STATE_FILE).unlink()

    async def deleted(self, rec: VMRecord) -> None:
        self.store.delete(rec.id)

    def sweep(self, records: list[VMRecord], min_age: float = 60.0) -> None:
        """At daemon start: what VMs that exited while no daemon watched left behind (their
        stopped() never ran): ACL grants and cgroups of this data dir's VMs that are not
        live, and empty VM cgroups (any data dir's) older than `min_age`, which no start
        can be about to fill."""
        for rec in records:
            if rec.state in LIVE:
                continue
            run_dir = self.layout.vm_dir(rec.id)
            state = sandbox.load_state(run_dir)
            if state is not None:
                sandbox.revoke_grants(state.uid, state.grants)
                (run_dir / sandbox.STATE_FILE).unlink(missing_ok=True)
            (run_dir / CGROUP_FILE).unlink(missing_ok=True)
        if self.cgroups is None:
            return
        for group, age in self.cgroups.groups().items():
            if age >= min_age and not self.cgroups.procs(group):
                with contextlib.suppress(EngineError):
                    self.cgroups.remove(group)

    @staticmethod
    def _remove_cgroup(cg: Cgroups, group: str) -> None:
        with contextlib.suppress(EngineError):
            cg.remove(group)

    @staticmethod
    async def _remove_when_empty(cg: Cgroups, group: str, timeout: float = 5.0) -> None:
        """An exited QEMU leaves its group once reaped, a moment after the QMP socket closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                cg.remove(group)
                return
            except EngineError as e:
                if loop.time() >= deadline:
                    log.warning("cgroup of VM %s not removed: %s", group, e.message)
                    return
            await asyncio.sleep(0.1)

    # -- kasou vm show -----------------------------------------------------------------------
    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        limits = self.effective(rec)
        out: dict[str, Any] = {"limits": limits.model_dump(exclude_none=True)}
        if rt is None:
            out["sandbox"] = "on at start" if self.sandboxed else "off"
            return out
        out["memory_max_mib"] = memory_limit_bytes(rec.spec.memory, rt.accel) >> 20
        cg = load_cgroup(self.layout.vm_dir(rec.id))
        if cg is not None:
            out["cgroup"] = {"version": cg.version, "paths": cg.paths(rec.id)}
        out["sandbox"] = self._sandbox_facts(rec, rt)
        return out

    def _sandbox_facts(self, rec: VMRecord, rt: Runtime) -> dict[str, Any]:
        """What /proc says about the running QEMU, so the claim is checked, not assumed."""
        ident = sandbox.process_identity(rt.pid)
        state = sandbox.load_state(self.layout.vm_dir(rec.id))
        facts: dict[str, Any] = {"enabled": state is not None, **ident}
        if state is not None:
            facts["seccomp_policy"] = state.seccomp
        return facts


def _needs_cgroups(limits: Limits) -> str | None:
    """The first limit set that only a cgroup can enforce."""
    for field in ("cpu_limit", "cpu_weight", "pin", "io_weight"):
        if getattr(limits, field) is not None:
            return field
    return None
