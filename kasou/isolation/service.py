"""`kasou vm set`: change a VM's limits, live when it runs, and keep them; KSM on the host.

A change is validated against the VM and the host before anything is touched, applied to
the running QEMU (cgroup knobs, balloon target) and only then stored; when applying fails
halfway, the previous limits are put back.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import BaseModel, ValidationError

from kasou.errors import EngineError, InvalidSpec, InvalidState
from kasou.host.ksm import KsmInfo, ksm_info, set_ksm
from kasou.isolation.hook import IsolationHook, load_cgroup
from kasou.isolation.limits import Limits, memory_limit_bytes, merge
from kasou.service.vms import VMService
from kasou.store.base import DEFAULT_PROJECT, VMRecord
from kasou.store.isolation import LimitsStore


class LimitsView(BaseModel):
    vm: str
    limits: Limits
    live: bool                  # applied to a running QEMU just now / in force
    memory_max_mib: int         # the hard limit the VM's QEMU runs under


class IsolationService:
    def __init__(self, vms: VMService, hook: IsolationHook, store: LimitsStore) -> None:
        self.vms = vms
        self.hook = hook
        self.store = store

    def get(self, ref: str, project: str = DEFAULT_PROJECT) -> LimitsView:
        rec = self.vms.store.get_vm(ref, project)
        return self._view(rec, live=self._qmp(rec) is not None)

    async def set(self, ref: str, changes: dict[str, Any],
                  project: str = DEFAULT_PROJECT) -> LimitsView:
        rec = self.vms.store.get_vm(ref, project)
        async with self.vms.lock(rec.id):
            rec = self.vms.store.get_vm(rec.id, project)
            old = self.hook.effective(rec)
            new = _merge(old, changes)
            self.hook.check(rec, new)
            qmp = self._qmp(rec)
            if qmp is not None:
                await self._apply_live(rec, old, new, qmp)
            self.store.put(rec.id, new, rec.project)
            return self._view(rec, live=qmp is not None)

    def _qmp(self, rec: VMRecord) -> Any:
        try:
            return self.vms.supervisor(rec).qmp
        except InvalidState:
            return None

    async def _apply_live(self, rec: VMRecord, old: Limits, new: Limits, qmp: Any) -> None:
        cg = load_cgroup(self.vms.layout.vm_dir(rec.id))
        accel = self._accel(rec)
        if cg is not None:
            try:
                self.hook.apply_cgroup(cg, rec, new, accel)
            except EngineError:
                with contextlib.suppress(EngineError):
                    self.hook.apply_cgroup(cg, rec, old, accel)
                raise
        if new.memory_target != old.memory_target:
            await self.hook.apply_balloon(rec, new, qmp)

    def _accel(self, rec: VMRecord) -> str:
        try:
            return self.vms.supervisor(rec).rt.accel
        except InvalidState:
            return self.vms.host.accelerator

    def _view(self, rec: VMRecord, live: bool) -> LimitsView:
        return LimitsView(vm=rec.name, limits=self.hook.effective(rec), live=live,
                          memory_max_mib=memory_limit_bytes(rec.spec.memory,
                                                            self._accel(rec)) >> 20)

    # -- KSM ---------------------------------------------------------------------------------
    def ksm(self) -> KsmInfo:
        return ksm_info()

    def set_ksm(self, on: bool, unmerge: bool = False) -> KsmInfo:
        return set_ksm(on, unmerge)


def _merge(old: Limits, changes: dict[str, Any]) -> Limits:
    unknown = sorted(set(changes) - set(Limits.model_fields))
    if unknown:
        raise InvalidSpec(f"{unknown[0]}: unknown field", field=unknown[0])
    try:
        return merge(old, changes)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "limits"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise InvalidSpec(f"{field}: {msg}", field=field) from None
