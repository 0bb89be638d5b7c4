"""Desktop pools on real VMs: make a pool's desktops as linked clones of its template,
hand them to users, take them back (reset to the template or kept, per the pool's policy),
grow and shrink pools, and let a user into their own desktop.

Each pool's actions hold the pool's lock; creates and resizes also hold one lock for all
pools, so the check that all pools fit the host and the change are one step. A failure
part-way undoes what the action made.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

from kasou.console.service import ConsoleService
from kasou.desktop import accounting as acct
from kasou.desktop.hook import DesktopHook
from kasou.desktop.models import ConsoleAccess, DesktopView, PoolSpec, PoolView
from kasou.errors import Conflict, KasouError, NotFound
from kasou.host.capacity import Usage
from kasou.service.revert import Reverter
from kasou.service.vms import VMService
from kasou.spec import parse_spec
from kasou.state import VMState
from kasou.store.base import now_iso
from kasou.store.desktop import DesktopRow, DesktopStore, PoolRow
from kasou.tenancy.models import Principal
from kasou.tenancy.service import TenancyService

# States a desktop is killed from before it is reset or removed (its user's session is
# being discarded anyway).
_KILLABLE = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.STARTING, VMState.STOPPING})
_STARTABLE = frozenset({VMState.STOPPED, VMState.CRASHED, VMState.SUSPENDED})


class DesktopService:
    def __init__(self, vms: VMService, console: ConsoleService, tenancy: TenancyService,
                 hook: DesktopHook) -> None:
        self.vms = vms
        self.console = console
        self.tenancy = tenancy
        self.hook = hook
        self.store: DesktopStore = hook.store
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._all_pools = asyncio.Lock()

    # -- queries ---------------------------------------------------------------------------
    def pools(self, project: str | None) -> list[PoolView]:
        return [self._view(p) for p in self.store.pools(project)]

    def show(self, name: str, project: str) -> PoolView:
        return self._view(self.store.pool(name, project))

    def mine(self, who: Principal) -> list[DesktopView]:
        return [self._desktop(pool, row) for pool, row in self.store.of_user(who.name)]

    def held_by(self, user: str) -> list[str]:
        """What `user` holds, for refusing to delete them: 'desktop lab-1 of pool lab'."""
        return [f"desktop {acct.desktop_name(p.name, d.idx)} of pool {p.name} (project "
                f"{p.project})" for p, d in self.store.of_user(user)]

    def pools_in(self, project: str) -> int:
        return len(self.store.pools(project))

    # -- pools -----------------------------------------------------------------------------
    async def create(self, spec: PoolSpec, project: str) -> PoolView:
        parse_spec(self._vm_spec(spec, 1))          # the desktops' spec, checked up front
        row = PoolRow(id=uuid.uuid4().hex[:12], project=project, name=spec.name,
                      spec=spec.model_dump_json(), created_at=now_iso())
        async with self._all_pools, Reverter() as revert:
            self._check_room(spec, project, spec.size, exclude=None)
            self.store.add_pool(row)
            revert.add(lambda: self.store.delete_pool(row.id))
            async with self._locks[row.id]:
                for idx in range(1, spec.size + 1):
                    await self._make_desktop(row, spec, idx, revert)
            revert.success()
        return self._view(row)

    async def resize(self, name: str, size: int, project: str) -> PoolView:
        row = self.store.pool(name, project)
        async with self._all_pools, self._locks[row.id]:
            row = self.store.pool(name, project)
            spec = self._spec(row)
            rows = self.store.desktops(row.id)
            plan = acct.plan_resize(name, self._seats(rows), size)
            self._check_room(spec.model_copy(update={"size": size}), project, len(plan.add),
                             exclude=row.id)
            async with Reverter() as revert:
                for idx in plan.add:
                    await self._make_desktop(row, spec, idx, revert)
                revert.success()
            by_idx = {d.idx: d for d in rows}
            for idx in plan.remove:
                await self._remove_desktop(row, by_idx[idx])
            self.store.set_spec(row.id, spec.model_copy(update={"size": size})
                                .model_dump_json())
        return self.show(name, project)

    async def delete(self, name: str, project: str, *, force: bool = False) -> None:
        """Delete a pool and its desktops. Refused while users hold desktops, unless forced
        (their desktops, disks and sessions are discarded)."""
        row = self.store.pool(name, project)
        async with self._all_pools, self._locks[row.id]:
            row = self.store.pool(name, project)
            rows = self.store.desktops(row.id)
            users = sorted(d.user for d in rows if d.user)
            if users and not force:
                raise Conflict(f"desktop pool {name!r} has {len(users)} assigned "
                                    f"desktops ({', '.join(users)}); return them first or "
                                    "pass --force", field="name")
            for d in sorted(rows, key=lambda d: -d.idx):
                await self._remove_desktop(row, d)
            self.store.delete_pool(row.id)
        self._locks.pop(row.id, None)

    # -- users -----------------------------------------------------------------------------
    async def assign(self, name: str, user: str, project: str) -> ConsoleAccess:
        """Give `user` a free desktop of the pool (theirs until returned), started, with a
        console token for it."""
        self.tenancy.store.get_user(user)        # NotFound names the user
        row = self.store.pool(name, project)
        async with self._locks[row.id]:
            rows = self.store.desktops(row.id)
            seat = acct.pick_free(name, self._seats(rows), user)
            self.store.assign(row.id, seat.index, user, now_iso())
            desk = next(d for d in rows if d.idx == seat.index)
            try:
                return await self._open(row, desk, user)
            except BaseException:
                self.store.release(row.id, desk.idx, desk.vm_id)
                raise

    async def unassign(self, name: str, user: str, project: str) -> DesktopView:
        """Take a desktop back from `user`. With policy `reset` the desktop is discarded and
        made again from the template for the next user; with `keep` it stays as it is."""
        row = self.store.pool(name, project)
        async with self._locks[row.id]:
            rows = self.store.desktops(row.id)
            seat = acct.seat_of(name, self._seats(rows), user)
            desk = next(d for d in rows if d.idx == seat.index)
            spec = self._spec(row)
            vm_id = desk.vm_id
            if spec.policy == "reset":
                vm_id = await self._remake(row, spec, desk)
            self.store.release(row.id, desk.idx, vm_id)
            return self._desktop(row, self._row(row.id, desk.idx))

    async def open_mine(self, who: Principal, name: str, project: str) -> ConsoleAccess:
        """The caller's own desktop in a pool, started if it was not running, with a fresh
        console token: what a desktop user needs, whatever their project roles."""
        for pool, desk in self.store.of_user(who.name):
            if pool.name == name and pool.project == project:
                async with self._locks[pool.id]:
                    return await self._open(pool, self._row(pool.id, desk.idx), who.name)
        raise NotFound(f"you have no desktop in pool {name!r} of project {project!r}")

    # -- steps -----------------------------------------------------------------------------
    async def _open(self, pool: PoolRow, desk: DesktopRow, user: str) -> ConsoleAccess:
        rec = self.vms.store.get_vm_by_id(desk.vm_id)
        if rec.state in _STARTABLE:
            await self.vms.start(rec.id, pool.project)
        grant = self.console.grant(rec.id, pool.project)
        return ConsoleAccess(pool=pool.name, project=pool.project, vm=rec.name, user=user,
                             token=grant.token, expires_at=grant.expires_at, path=grant.path)

    async def _make_desktop(self, pool: PoolRow, spec: PoolSpec, idx: int,
                            revert: Reverter) -> None:
        view = await self.vms.create(self._vm_spec(spec, idx), pool.project)
        revert.add(lambda: self._discard(view.id, pool.project))
        self.store.add_desktop(DesktopRow(pool_id=pool.id, idx=idx, vm_id=view.id))
        revert.add(lambda: self.store.remove_desktop(pool.id, idx))

    async def _remove_desktop(self, pool: PoolRow, desk: DesktopRow) -> None:
        await self._discard(desk.vm_id, pool.project)
        self.store.remove_desktop(pool.id, desk.idx)

    async def _remake(self, pool: PoolRow, spec: PoolSpec, desk: DesktopRow) -> str:
        """Discard a desktop and make it again from the template; returns the new VM id.
        When the new one cannot be made, the desktop is dropped from the pool (a resize to
        the pool's size makes it again) and the error says so."""
        await self._discard(desk.vm_id, pool.project)
        try:
            view = await self.vms.create(self._vm_spec(spec, desk.idx), pool.project)
        except KasouError as e:
            self.store.remove_desktop(pool.id, desk.idx)
            raise Conflict(f"desktop {acct.desktop_name(pool.name, desk.idx)} was discarded "
                           f"but could not be made again: {e.message}; `kasou desktop-pool "
                           f"resize {pool.name} {spec.size}` retries", field=e.field) from e
        return view.id

    async def _discard(self, vm_id: str, project: str) -> None:
        """Kill and delete a desktop VM (and the disk it owns)."""
        try:
            rec = self.vms.store.get_vm_by_id(vm_id)
        except NotFound:
            return
        if rec.state in _KILLABLE:
            await self.vms.kill(vm_id, project)
        self.hook.releasing.add(vm_id)
        try:
            await self.vms.delete(vm_id, project)
        finally:
            self.hook.releasing.discard(vm_id)

    def _check_room(self, spec: PoolSpec, project: str, adding: int,
                    exclude: str | None) -> None:
        """Quota for the desktops to be made, and host capacity for all pools' desktops."""
        self.tenancy.check_quota(project, {"vms": adding, "vcpus": adding * spec.vcpus,
                                           "memory_mib": adding * spec.memory})
        others: list[Usage] = []
        for p in self.store.pools(None):
            if p.id != exclude:
                s = self._spec(p)
                others += acct.pool_demand(s.size, s.vcpus, s.memory)
        acct.check_pool_fits(self.vms.capacity, spec.name, others,
                             acct.pool_demand(spec.size, spec.vcpus, spec.memory))

    # -- views -----------------------------------------------------------------------------
    @staticmethod
    def _spec(row: PoolRow) -> PoolSpec:
        return PoolSpec.model_validate_json(row.spec)

    @staticmethod
    def _seats(rows: list[DesktopRow]) -> list[acct.Seat]:
        return [acct.Seat(d.idx, d.user) for d in rows]

    def _row(self, pool_id: str, idx: int) -> DesktopRow:
        for d in self.store.desktops(pool_id):
            if d.idx == idx:
                return d
        raise NotFound(f"desktop {idx} is gone from its pool")

    @staticmethod
    def _vm_spec(spec: PoolSpec, idx: int) -> dict[str, Any]:
        vm: dict[str, Any] = {"name": acct.desktop_name(spec.name, idx),
                              "template": spec.template, "vcpus": spec.vcpus,
                              "memory": spec.memory, "machine": "pc", "display": True}
        if spec.image:
            vm["image"] = spec.image
        return vm

    def _desktop(self, pool: PoolRow, row: DesktopRow) -> DesktopView:
        try:
            rec = self.vms.store.get_vm_by_id(row.vm_id)
            vm, state = rec.name, rec.state.value
        except NotFound:
            vm, state = acct.desktop_name(pool.name, row.idx), "missing"
        return DesktopView(pool=pool.name, project=pool.project, index=row.idx, vm=vm,
                           state=state, user=row.user, assigned_at=row.assigned_at)

    def _view(self, row: PoolRow) -> PoolView:
        spec = self._spec(row)
        desktops = [self._desktop(row, d) for d in self.store.desktops(row.id)]
        return PoolView(name=row.name, project=row.project, template=spec.template,
                        size=spec.size, policy=spec.policy, image=spec.image,
                        vcpus=spec.vcpus, memory=spec.memory, created_at=row.created_at,
                        assigned=sum(1 for d in desktops if d.user), desktops=desktops)
