"""One supervisor per live VM: holds its QMP connection and notices when QEMU goes away.

Events go to ONE central handler (the service's `on_event`), which drives the state
machine. When the monitor disconnects, the supervisor finds out whether the process is
gone and reports the exit as clean (a SHUTDOWN was seen or an exit was asked for) or as
a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from qemu.qmp import QMPClient, Runstate

from kasou.engine import process, qmp
from kasou.engine.runtime import Runtime

log = logging.getLogger(__name__)

EventHandler = Callable[[str, str, dict[str, Any]], Awaitable[None]]
ExitHandler = Callable[[str, "ExitInfo"], Awaitable[None]]


class ExitInfo:
    def __init__(self, clean: bool, reason: str | None) -> None:
        self.clean = clean
        self.reason = reason


class Supervisor:
    def __init__(self, rt: Runtime, client: QMPClient, on_event: EventHandler,
                 on_exit: ExitHandler) -> None:
        self.rt = rt
        self.qmp = client
        self._on_event = on_event
        self._on_exit = on_exit
        self.exit_requested = False
        self.exit_reason: str | None = None   # None: the user's own stop, nothing to explain
        self.shutdown_event: dict[str, Any] | None = None
        self.panicked = False
        self._task: asyncio.Task[None] | None = None
        self.gone = asyncio.Event()

    @classmethod
    async def attach(cls, rt: Runtime, on_event: EventHandler, on_exit: ExitHandler,
                     timeout: float = 5.0) -> Supervisor:
        client = await qmp.connect(f"vm-{rt.vm_id}", rt.qmp, timeout=timeout)
        sup = cls(rt, client, on_event, on_exit)
        sup._task = asyncio.create_task(sup._run(), name=f"supervise-{rt.vm_id}")
        return sup

    async def _run(self) -> None:
        with self.qmp.listener(qmp.LIFECYCLE_EVENTS) as listener:
            events = asyncio.create_task(self._pump(listener))
            try:
                while self.qmp.runstate == Runstate.RUNNING:
                    await self.qmp.runstate_changed()
            finally:
                # Events that arrived just before the disconnect are still queued.
                await asyncio.sleep(0)
                events.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await events
                for event in listener.clear():
                    await self._dispatch(event)
        await self._disconnect()
        info = await self._exit_info()
        try:
            await self._on_exit(self.rt.vm_id, info)
        finally:
            # Set only once the exit is handled: hooks' cleanup may await (TAPs are removed
            # in a worker thread), and a stop waiting on `gone` must then see the final state.
            self.gone.set()

    async def _pump(self, listener: Any) -> None:
        async for event in listener:
            await self._dispatch(event)

    async def _dispatch(self, event: Any) -> None:
        name = str(event["event"])
        data = dict(event.get("data", {}))
        if name == qmp.SHUTDOWN:
            self.shutdown_event = data
        if name == qmp.GUEST_PANICKED:
            self.panicked = True
        try:
            await self._on_event(self.rt.vm_id, name, data)
        except Exception:  # a bad handler must not stop supervision
            log.exception("event handler failed for %s %s", self.rt.vm_id, name)

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self.qmp.disconnect()

    async def _exit_info(self) -> ExitInfo:
        gone = await process.wait_gone(self.rt.pid, self.rt.proc_start, timeout=3.0)
        if not gone:
            # The monitor closed but QEMU lives on: nothing else closes it, so end it.
            process.kill(self.rt.pid, self.rt.proc_start)
            await process.wait_gone(self.rt.pid, self.rt.proc_start, timeout=3.0)
            return ExitInfo(False, f"QMP monitor of QEMU pid {self.rt.pid} closed; QEMU killed")
        if self.panicked:
            return ExitInfo(False, "the guest kernel panicked")
        if self.exit_requested:
            return ExitInfo(True, self.exit_reason)
        if self.shutdown_event is not None:
            return ExitInfo(True, _shutdown_reason(self.shutdown_event))
        return ExitInfo(False, f"QEMU (pid {self.rt.pid}) exited unexpectedly, without a "
                               "shutdown (killed by a signal or crashed)")

    async def detach(self) -> None:
        """Stop supervising without touching the VM (daemon shutdown)."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._disconnect()


def _shutdown_reason(data: dict[str, Any]) -> str:
    if data.get("guest"):
        return f"guest shut down ({data.get('reason', 'guest-shutdown')})"
    return f"shut down by the host ({data.get('reason', 'host-qmp-quit')})"
