"""Suspend to disk and restore: the guest's RAM and device state go to a file in the VM's
run dir, QEMU exits, and the next start restores instead of booting.

Saving pauses the guest first (RAM is then written once, with the bandwidth cap raised),
migrates to a file descriptor the daemon opened (QEMU 7.2 has no `file:` migration), and
fsyncs it. Restoring starts QEMU with `-incoming defer` and the same devices (disks keep
their slots), hands it the file over QMP and waits until the guest state is loaded; the
guest then runs again if it was running when suspended.

While suspended the VM's disks must not change (no attach/detach, snapshot or revert):
the saved device state describes them as they were.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from qemu.qmp import QMPClient

from kasou.engine import qmp, qmp_storage
from kasou.errors import Conflict, EngineError, KasouError
from kasou.service.views import VMView
from kasou.state import VMState, check
from kasou.storage.core import StorageCore
from kasou.storage.models import SavedState
from kasou.storage.views import SavedStateView
from kasou.store.base import VMRecord, now_iso

log = logging.getLogger(__name__)
S = VMState
STATE_FILE = "memory.state"


class Suspender:
    def __init__(self, core: StorageCore) -> None:
        self.core = core
        self.store = core.store

    def state_file(self, vm_id: str) -> Path:
        return self.core.layout.vm_dir(vm_id) / STATE_FILE

    def saved(self, vm_id: str) -> SavedStateView | None:
        st = self.store.saved_state(vm_id)
        if st is None:
            return None
        return SavedStateView(path=st.path, size=st.size, was_running=st.was_running,
                              saved_at=st.saved_at)

    # -- suspend ---------------------------------------------------------------------------
    async def suspend(self, ref: str, project: str) -> VMView:
        vms = self.core.vms
        rec = self.core.vm(ref, project)
        async with vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            check(rec.name, rec.state, "suspend")
            sup = vms.supervisor(rec)
            vms.set_state(rec.id, S.SUSPENDING)
            try:
                st = await self._save(rec, sup.qmp, was_running=rec.state == S.RUNNING)
            except BaseException as e:
                await self._undo(rec, sup.qmp, e)
                raise
            sup.exit_reason = "suspended to disk"
            await vms.end_process(rec)
            self.store.save_state(st)
            vms.set_state(rec.id, S.SUSPENDED)
        return vms.show(rec.id, project)

    async def _save(self, rec: VMRecord, client: QMPClient, was_running: bool) -> SavedState:
        final = self.state_file(rec.id)
        part = final.with_suffix(".part")
        if was_running:
            await qmp.stop(client)     # write RAM once, not chase a running guest
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            await qmp_storage.save_to_fd(client, fd)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        finally:
            os.close(fd)
        os.replace(part, final)
        return SavedState(vm_id=rec.id, project=rec.project, path=str(final),
                          size=final.stat().st_size, was_running=was_running,
                          saved_at=now_iso())

    async def _undo(self, rec: VMRecord, client: QMPClient, error: BaseException) -> None:
        """Saving failed: the guest carries on as it was, or is reported crashed."""
        vms = self.core.vms
        with contextlib.suppress(FileNotFoundError):
            self.state_file(rec.id).unlink()
        try:
            if rec.state == S.RUNNING:
                await qmp.cont(client)
            vms.set_state(rec.id, rec.state)
        except KasouError:
            reason = getattr(error, "message", None) or repr(error)
            vms.set_state(rec.id, S.CRASHED, f"QEMU went away while suspending: {reason}")

    # -- restore (called by the storage hook while the VM starts) --------------------------
    def check_restorable(self, rec: VMRecord) -> None:
        path = self.state_file(rec.id)
        if not path.is_file() or self.store.saved_state(rec.id) is None:
            raise Conflict(f"VM {rec.name!r} is suspended but its saved state ({path}) is "
                           f"missing; `kasou vm suspend {rec.name} --discard` lets it boot "
                           "afresh")

    async def restore(self, rec: VMRecord, client: QMPClient) -> None:
        st = self.store.saved_state(rec.id)
        path = self.state_file(rec.id)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = await qmp_storage.restore_from_fd(client, fd)
        except KasouError as e:
            raise EngineError(f"restoring {rec.name}'s saved state failed ({e.message}); it "
                              "is kept: retry, or discard it with `kasou vm suspend "
                              f"{rec.name} --discard`") from e
        finally:
            os.close(fd)
        if st is not None and st.was_running and status != "running":
            await qmp.cont(client)
        # The guest now runs on from the saved state and writes its disks: the file no
        # longer matches them, so it must never be restored again.
        path.unlink()
        self.store.drop_saved_state(rec.id)

    # -- discard ---------------------------------------------------------------------------
    async def discard(self, ref: str, project: str) -> VMView:
        vms = self.core.vms
        rec = self.core.vm(ref, project)
        async with vms.lock(rec.id):
            rec = self.core.vm(rec.id, project)
            check(rec.name, rec.state, "discard")
            self.drop(rec.id)
            vms.set_state(rec.id, S.STOPPED, None)
        return vms.show(rec.id, project)

    def drop(self, vm_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_file(vm_id).unlink()
        self.store.drop_saved_state(vm_id)
