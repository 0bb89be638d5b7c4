"""Hooks into a VM's life, so each area (storage, network, host limits, console...) adds its
part without the lifecycle code knowing about it.

A hook may add devices to the launch plan, prepare host state before QEMU starts (and
register undo steps), act once QEMU runs, and clean up after it exits or when the VM is
deleted. The service calls every hook in order at each point; `describe` adds the hook's
facts to `kasou vm show`.
"""

from __future__ import annotations

from typing import Any

from qemu.qmp import QMPClient

from kasou.engine.plan import LaunchPlan
from kasou.engine.runtime import Runtime
from kasou.service.revert import Reverter
from kasou.store.base import VMRecord


class VMHook:
    """Base class with no-op defaults; override what the area needs."""

    name = "hook"

    def validate(self, rec: VMRecord) -> None:
        """Refuse a spec this area cannot honour (raise InvalidSpec) before anything exists.

        Runs under the service's create lock, so a check-then-create here is atomic."""

    async def created(self, rec: VMRecord, revert: Reverter) -> None:
        """The VM's row exists: make what it owns (disks cloned from a template...) and
        add undo steps to revert; a failure here undoes the whole create."""

    def admit(self, rec: VMRecord) -> None:
        """Last word before a start, under the capacity lock (quotas): raise to refuse."""

    def plan(self, rec: VMRecord, plan: LaunchPlan) -> LaunchPlan:
        """Add this area's devices/options to the plan. Pure: no host changes here."""
        return plan

    async def prepare(self, rec: VMRecord, plan: LaunchPlan, revert: Reverter) -> None:
        """Create host state QEMU needs (TAP devices, cgroups...); add undo steps to revert."""

    async def started(self, rec: VMRecord, rt: Runtime, qmp: QMPClient,
                      revert: Reverter) -> None:
        """QEMU is up (maybe still paused): apply live settings, move it into cgroups."""

    async def reattached(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        """The daemon restarted and found this VM running: re-create missing host state."""

    async def stopped(self, rec: VMRecord) -> None:
        """QEMU has exited (any reason): release host state made in prepare()."""

    async def deleted(self, rec: VMRecord) -> None:
        """The VM is being deleted: release what this area owns for it."""

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        """Facts for `kasou vm show` under this hook's name."""
        return {}
