"""The one command set for VMs. The API, CLI and web UI only call these operations.

Each operation on a VM holds that VM's lock; starts also hold the capacity lock, so the
capacity check and the move to `starting` are one atomic step. Multi-step operations undo
what they did when a later step fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from kasou.engine import process, qmp
from kasou.engine import runtime as rtfile
from kasou.engine.argv import build_argv
from kasou.engine.plan import LaunchPlan
from kasou.engine.runtime import Runtime
from kasou.errors import EngineError, InvalidState, KasouError, NotFound
from kasou.host.capacity import HostCapacity, Usage, check_fits
from kasou.host.probe import HostInfo
from kasou.images.manifest import ImageManifest
from kasou.paths import Layout
from kasou.service import resolve as rs
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.service.supervisor import ExitInfo, Supervisor
from kasou.service.views import LogChunk, VMView
from kasou.spec import parse_spec
from kasou.state import LIVE, VMState, can_move, check
from kasou.store.base import DEFAULT_PROJECT, Store, VMRecord, batch_memo, now_iso, read_batch

log = logging.getLogger(__name__)

S = VMState
DEFAULT_STOP_TIMEOUT = 30.0
LOG_CHUNK_MAX = 1 << 20


class Launcher(Protocol):
    """Starts QEMU some other way than `-daemonize` (kasou/isolation/sandbox.py: as an
    unprivileged user under seccomp); writes the pidfile and returns QEMU's pid once up."""

    async def launch(self, rec: VMRecord, plan: LaunchPlan, argv: list[str]) -> int: ...


class VMService:
    def __init__(self, layout: Layout, store: Store, host: HostInfo,
                 capacity: HostCapacity, images_root: Path | None = None,
                 hooks: Sequence[VMHook] = (), launcher: Launcher | None = None) -> None:
        self.layout = layout
        self.hooks = list(hooks)
        self.launcher = launcher    # None: QEMU daemonizes itself (process.launch)
        self.store = store
        self.host = host
        self.capacity = capacity
        self.images_root = images_root
        self._sups: dict[str, Supervisor] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._capacity_lock = asyncio.Lock()
        self._create_lock = asyncio.Lock()

    # -- daemon lifecycle -------------------------------------------------------------
    async def startup(self) -> None:
        """Re-attach to every VM that was live when the daemon last ran."""
        for rec in self.store.list_vms():
            if rec.state in LIVE:
                async with self._locks[rec.id]:
                    await self._reattach(rec)

    async def shutdown(self) -> None:
        """Let go of the VMs without stopping them: they outlive the daemon."""
        for sup in list(self._sups.values()):
            await sup.detach()
        self._sups.clear()

    async def _reattach(self, rec: VMRecord) -> None:
        run_dir = self.layout.vm_dir(rec.id)
        rt = rtfile.load(run_dir / "runtime.json")
        if rt is None or not process.is_alive(rt.pid, rt.proc_start):
            self._set(rec.id, S.CRASHED, "QEMU exited while kasou was not running")
            self._clean_run_files(run_dir)
            return
        try:
            sup = await Supervisor.attach(rt, self.on_event, self.on_exit)
            status = await qmp.query_status(sup.qmp)
        except KasouError as e:
            self._set(rec.id, S.CRASHED, f"cannot re-attach: {e.message}")
            return
        self._sups[rec.id] = sup
        for hook in self.hooks:
            try:
                await hook.reattached(rec, rt, sup.qmp)
            except KasouError as e:
                log.warning("re-attaching %s: %s could not restore: %s", rec.name, hook.name,
                            e.message)
        self._set(rec.id, S.RUNNING if status.running else S.PAUSED, None)

    # -- queries ---------------------------------------------------------------------
    def list(self, project: str | None = DEFAULT_PROJECT) -> list[VMView]:
        records = self.store.list_vms(project)
        # One read for the whole list: each area's per-VM facts come from one query per
        # table, and an image's manifest is read once, not per VM and hook.
        with read_batch(project, [r.id for r in records]):
            return [self._view(r) for r in records]

    def show(self, ref: str, project: str = DEFAULT_PROJECT) -> VMView:
        return self._view(self.store.get_vm(ref, project))

    def logs(self, ref: str, offset: int = 0, limit: int = LOG_CHUNK_MAX,
             project: str = DEFAULT_PROJECT) -> LogChunk:
        rec = self.store.get_vm(ref, project)
        path = self.layout.vm_dir(rec.id) / "serial.log"
        limit = max(1, min(limit, LOG_CHUNK_MAX))
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                start = size + offset if offset < 0 else offset
                start = max(0, min(start, size))
                f.seek(start)
                data = f.read(limit)
        except FileNotFoundError:
            return LogChunk(offset=0, next_offset=0, size=0, data="")
        return LogChunk(offset=start, next_offset=start + len(data), size=size,
                        data=data.decode(errors="replace"))

    def console_socket(self, ref: str, project: str = DEFAULT_PROJECT) -> str:
        rec = self.store.get_vm(ref, project)
        check(rec.name, rec.state, "console")
        return str(self.layout.vm_dir(rec.id) / "console.sock")

    # -- create / delete ------------------------------------------------------------------
    async def create(self, data: dict[str, Any], project: str = DEFAULT_PROJECT) -> VMView:
        spec = parse_spec(data)
        image = rs.image_of(spec, self.images_root)
        rs.check_files(spec)
        rs.check_against_host(spec, rs.machine_for(spec, image), self.host, image)
        vm_id = uuid.uuid4().hex[:12]
        ts = now_iso()
        rec = VMRecord(id=vm_id, name=spec.name, project=project, spec=spec,
                       created_at=ts, updated_at=ts)
        run_dir = self.layout.vm_dir(vm_id)
        async with self._create_lock:
            for hook in self.hooks:
                hook.validate(rec)
            run_dir.mkdir(mode=0o700)
            try:
                self.store.create_vm(rec)   # the UNIQUE constraint settles racing creates
            except BaseException:
                shutil.rmtree(run_dir, ignore_errors=True)
                raise
        await self._created(rec, run_dir)
        return self._view(rec)

    async def _created(self, rec: VMRecord, run_dir: Path) -> None:
        """Each area makes what the new VM owns (e.g. a disk cloned from a template) under
        the VM's lock, so a start cannot slip in first; a failure undoes the VM too."""
        async with self._locks[rec.id], Reverter() as revert:
            revert.add(lambda: shutil.rmtree(run_dir, ignore_errors=True))
            revert.add(lambda: self.store.delete_vm(rec.id))
            for hook in self.hooks:
                await hook.created(rec, revert)
            revert.success()

    async def delete(self, ref: str, project: str = DEFAULT_PROJECT) -> None:
        rec = self.store.get_vm(ref, project)
        async with self._locks[rec.id]:
            rec = self.store.get_vm(rec.id, project)
            check(rec.name, rec.state, "delete")
            for hook in self.hooks:
                await hook.deleted(rec)
            self.store.delete_vm(rec.id)
            # Only the run dir is kasou's: disks the user passed in are never touched.
            shutil.rmtree(self.layout.vm_dir(rec.id), ignore_errors=True)
        self._locks.pop(rec.id, None)

    # -- start ----------------------------------------------------------------------------
    async def start(self, ref: str, project: str = DEFAULT_PROJECT) -> VMView:
        rec = self.store.get_vm(ref, project)
        async with self._locks[rec.id]:
            rec = self.store.get_vm(rec.id, project)
            check(rec.name, rec.state, "start")
            run_dir = self.layout.vm_dir(rec.id)
            resolved = rs.resolve(rec.id, rec.spec, run_dir, self.host, self.images_root)
            plan = resolved.plan
            for hook in self.hooks:
                plan = hook.plan(rec, plan)
            async with self._capacity_lock:
                self._check_capacity(rec)
                for hook in self.hooks:
                    hook.admit(rec)
                self.store.set_state(rec.id, S.STARTING, None, expect=frozenset({rec.state}))
            try:
                await self._launch(rec, run_dir, plan, resolved.graceful_stop)
            except BaseException as e:
                reason = getattr(e, "message", None) or f"start failed: {e!r}"
                self.store.set_state(rec.id, rec.state, reason)
                raise
            return self.show(rec.id, project)

    def _check_capacity(self, rec: VMRecord) -> None:
        used = [Usage(r.spec.vcpus, r.spec.memory) for r in self.store.list_vms(None)
                if r.state in LIVE and r.id != rec.id]
        check_fits(self.capacity, used, Usage(rec.spec.vcpus, rec.spec.memory))

    async def _launch(self, rec: VMRecord, run_dir: Path, plan: LaunchPlan,
                      graceful_stop: bool) -> None:
        """Every step registers its undo; any failure leaves no process, file or host state."""
        async with Reverter() as revert:
            run_dir.mkdir(mode=0o700, exist_ok=True)
            self._clean_run_files(run_dir)
            revert.add(lambda: self._clean_run_files(run_dir))
            rs.prepare_firmware(plan)
            for hook in self.hooks:
                await hook.prepare(rec, plan, revert)
            argv = build_argv(plan)
            revert.add(lambda: self._kill_from_pidfile(run_dir))
            if self.launcher is not None:
                pid = await self.launcher.launch(rec, plan, argv)
            else:
                pid = await process.launch(argv, Path(plan.paths.pidfile))
            rt = Runtime(vm_id=rec.id, pid=pid, proc_start=process.proc_start_time(pid) or 0,
                         argv=argv, qmp=plan.paths.qmp, console=plan.paths.console,
                         serial_log=plan.paths.serial_log, accel=plan.accel,
                         machine=plan.machine, started_at=now_iso(), graceful_stop=graceful_stop)
            rtfile.save(run_dir / "runtime.json", rt)
            sup = await Supervisor.attach(rt, self.on_event, self.on_exit)
            revert.add(lambda: self._drop_supervisor(rec.id))
            self._sups[rec.id] = sup
            for hook in self.hooks:
                await hook.started(rec, rt, sup.qmp, revert)
            status = await qmp.query_status(sup.qmp)
            self._set(rec.id, S.RUNNING if status.running else S.PAUSED, None)
            revert.success()

    async def _drop_supervisor(self, vm_id: str) -> None:
        sup = self._sups.pop(vm_id, None)
        if sup is not None:
            sup.exit_requested = True
            await sup.detach()

    async def _kill_from_pidfile(self, run_dir: Path) -> None:
        rt = rtfile.load(run_dir / "runtime.json")
        pid = rt.pid if rt else process.read_pidfile(run_dir / "pid")
        if pid:
            start = rt.proc_start if rt else None
            process.kill(pid, start)
            await process.wait_gone(pid, start, 5.0)

    # -- stop / kill ---------------------------------------------------------------------
    async def stop(self, ref: str, project: str = DEFAULT_PROJECT, *, force: bool = False,
                   timeout: float | None = None) -> VMView:
        rec = self.store.get_vm(ref, project)
        async with self._locks[rec.id]:
            rec = self.store.get_vm(rec.id, project)
            check(rec.name, rec.state, "stop")
            sup = self._sup(rec)
            self._set(rec.id, S.STOPPING, None)
            sup.exit_requested = True
            graceful = not force and sup.rt.graceful_stop
            if graceful:
                if rec.state == S.PAUSED:
                    await qmp.cont(sup.qmp)   # a paused guest cannot hear the power button
                await qmp.system_powerdown(sup.qmp)
                wait = DEFAULT_STOP_TIMEOUT if timeout is None else timeout
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sup.gone.wait(), wait)
            if not sup.gone.is_set():
                await self._force_exit(sup)
            return self.show(rec.id, project)

    async def kill(self, ref: str, project: str = DEFAULT_PROJECT) -> VMView:
        rec = self.store.get_vm(ref, project)
        async with self._locks[rec.id]:
            rec = self.store.get_vm(rec.id, project)
            check(rec.name, rec.state, "kill")
            sup = self._sup(rec)
            sup.exit_requested = True
            sup.exit_reason = "killed on request (SIGKILL)"
            process.kill(sup.rt.pid, sup.rt.proc_start)
            await sup.gone.wait()
            return self.show(rec.id, project)

    async def _force_exit(self, sup: Supervisor) -> None:
        sup.exit_requested = True
        with contextlib.suppress(EngineError):
            await asyncio.wait_for(qmp.quit_(sup.qmp), 5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sup.gone.wait(), 5.0)
        if not sup.gone.is_set():
            process.kill(sup.rt.pid, sup.rt.proc_start)
            await sup.gone.wait()

    # -- pause / resume / reboot ------------------------------------------------------------
    async def pause(self, ref: str, project: str = DEFAULT_PROJECT) -> VMView:
        return await self._simple(ref, project, "pause", qmp.stop, S.PAUSED)

    async def resume(self, ref: str, project: str = DEFAULT_PROJECT) -> VMView:
        return await self._simple(ref, project, "resume", qmp.cont, S.RUNNING)

    async def reboot(self, ref: str, project: str = DEFAULT_PROJECT) -> VMView:
        return await self._simple(ref, project, "reboot", qmp.system_reset, S.RUNNING)

    async def _simple(self, ref: str, project: str, action: str, command: Any,
                      after: VMState) -> VMView:
        rec = self.store.get_vm(ref, project)
        async with self._locks[rec.id]:
            rec = self.store.get_vm(rec.id, project)
            check(rec.name, rec.state, action)
            await command(self._sup(rec).qmp)
            self._set(rec.id, after, None)
            return self.show(rec.id, project)

    # -- the central event handler --------------------------------------------------------
    async def on_event(self, vm_id: str, event: str, data: dict[str, Any]) -> None:
        """Every QMP lifecycle event of every VM comes here and only here."""
        if event == qmp.STOP:
            self._move_if(vm_id, S.RUNNING, S.PAUSED, None)
        elif event == qmp.RESUME:
            self._move_if(vm_id, S.PAUSED, S.RUNNING, None)
        elif event == qmp.SHUTDOWN:
            self._move_if(vm_id, S.RUNNING, S.STOPPING, None)
            self._move_if(vm_id, S.PAUSED, S.STOPPING, None)
        elif event == qmp.GUEST_PANICKED:
            self._set(vm_id, S.CRASHED, "the guest kernel panicked")

    async def on_exit(self, vm_id: str, info: ExitInfo) -> None:
        self._sups.pop(vm_id, None)
        try:
            rec = self.store.get_vm_by_id(vm_id)
        except NotFound:
            return
        self._clean_run_files(self.layout.vm_dir(vm_id))
        for hook in self.hooks:
            try:
                await hook.stopped(rec)
            except Exception:  # cleanup of one area must not keep the VM "running"
                log.exception("%s cleanup after %s exited failed", hook.name, rec.name)
        if rec.state == S.CRASHED:
            return
        if rec.state in (S.STARTING, S.SUSPENDING):
            return   # the start or suspend in progress sets the state itself
        self._set(vm_id, S.STOPPED if info.clean else S.CRASHED, info.reason)

    # -- for areas that act on a VM (storage: snapshots, suspend, hotplug) -----------------
    def lock(self, vm_id: str) -> asyncio.Lock:
        """The VM's one lock: hold it for any operation that changes the VM."""
        return self._locks[vm_id]

    def supervisor(self, rec: VMRecord) -> Supervisor:
        """The live VM's supervisor (its QMP connection); InvalidState if it has none."""
        return self._sup(rec)

    async def end_process(self, rec: VMRecord) -> None:
        """End a live VM's QEMU now (quit, then SIGKILL) and wait until it is gone."""
        await self._force_exit(self._sup(rec))

    def set_state(self, vm_id: str, state: VMState, reason: str | None = None) -> None:
        self._set(vm_id, state, reason)

    # -- helpers ---------------------------------------------------------------------------
    def _sup(self, rec: VMRecord) -> Supervisor:
        sup = self._sups.get(rec.id)
        if sup is None:
            raise InvalidState(rec.name, rec.state.value, "control", [S.RUNNING.value])
        return sup

    def _set(self, vm_id: str, state: VMState, reason: str | None) -> None:
        self.store.set_state(vm_id, state, reason)

    def _move_if(self, vm_id: str, current: VMState, new: VMState, reason: str | None) -> None:
        with contextlib.suppress(InvalidState, NotFound):
            if can_move(current, new):
                self.store.set_state(vm_id, new, reason, expect=frozenset({current}))

    @staticmethod
    def _clean_run_files(run_dir: Path) -> None:
        for name in ("qmp.sock", "console.sock", "pid", "runtime.json"):
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()

    def _view(self, rec: VMRecord) -> VMView:
        run_dir = self.layout.vm_dir(rec.id)
        sup = self._sups.get(rec.id)
        rt = sup.rt if sup else None
        image = batch_memo(("image", rec.spec.image, self.images_root),
                           lambda: self._image(rec))
        return VMView(
            id=rec.id, name=rec.name, project=rec.project, state=rec.state, reason=rec.reason,
            pid=rt.pid if rt else None,
            accelerator=rt.accel if rt else self.host.accelerator,
            machine=rt.machine if rt else rs.machine_for(rec.spec, image),
            vcpus=rec.spec.vcpus, memory=rec.spec.memory, image=rec.spec.image,
            os=image.os if image else None, created_at=rec.created_at,
            updated_at=rec.updated_at, started_at=rt.started_at if rt else None,
            console=rt.console if rt else None, serial_log=str(run_dir / "serial.log"),
            spec=rec.spec, extras=self._extras(rec, rt),
        )

    def _image(self, rec: VMRecord) -> ImageManifest | None:
        try:
            return rs.image_of(rec.spec, self.images_root)
        except KasouError:
            return None

    def _extras(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for hook in self.hooks:
            facts = hook.describe(rec, rt)
            if facts:
                out[hook.name] = facts
        return out
