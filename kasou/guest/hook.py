"""What the guest agent says about a running VM, kept fresh in the background (a VMHook).

`kasou vm show` must stay fast, and a guest without an agent never answers, so `describe`
never talks to the agent: it returns the last facts a watcher task fetched. One watcher
per running VM asks the agent for its OS and addresses: often at first (the agent comes
up with the guest), then every REFRESH_S; a `show` of facts older than STALE_S wakes it
for the next `show`. A guest without an agent costs one short connection attempt every
minute at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from kasou.engine import agent
from kasou.engine.runtime import Runtime
from kasou.errors import AgentFailure, AgentUnavailable
from kasou.service.hooks import VMHook
from kasou.service.revert import Reverter
from kasou.store.base import VMRecord

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0      # a live agent answers in milliseconds; a missing one never
REFRESH_S = 60.0
STALE_S = 10.0
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)


@dataclass
class GuestFacts:
    answering: bool
    checked_at: float                 # time.time()
    os: str | None = None
    kernel: str | None = None
    addresses: dict[str, list[str]] = field(default_factory=dict)   # iface -> addr/prefix

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "agent": "answering" if self.answering else "not answering",
            "checked_at": datetime.fromtimestamp(self.checked_at, UTC).isoformat(
                timespec="seconds")}
        if self.answering:
            out.update(os=self.os, kernel=self.kernel, addresses=self.addresses,
                       ips=[a.split("/")[0] for addrs in self.addresses.values()
                            for a in addrs])
        return out


async def query_facts(socket_path: Path, timeout: float = PROBE_TIMEOUT_S) -> GuestFacts:
    """Ask the agent now; AgentUnavailable/AgentFailure if it does not answer."""
    async with agent.session(socket_path, timeout) as session:
        info = await agent.get_osinfo(session)
        ifaces = await agent.network_interfaces(session)
    addresses = {i.name: [f"{a.address}/{a.prefix}" for a in i.addresses
                          if not _local(a.address)]
                 for i in ifaces if i.name != "lo"}
    return GuestFacts(answering=True, checked_at=time.time(),
                      os=info.pretty_name or info.name, kernel=info.kernel_release,
                      addresses={k: v for k, v in addresses.items() if v})


async def fetch_facts(socket_path: Path, timeout: float = PROBE_TIMEOUT_S) -> GuestFacts:
    """query_facts, with answering=False instead of an error."""
    try:
        return await query_facts(socket_path, timeout)
    except (AgentUnavailable, AgentFailure):
        return GuestFacts(answering=False, checked_at=time.time())


def _local(address: str) -> bool:
    return address.startswith(("127.", "fe80:")) or address == "::1"


class GuestAgentHook(VMHook):
    name = "guest"

    def __init__(self) -> None:
        self._facts: dict[str, GuestFacts] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def started(self, rec: VMRecord, rt: Runtime, qmp: QMPClient,
                      revert: Reverter) -> None:
        self._watch(rec.id, rt)

    async def reattached(self, rec: VMRecord, rt: Runtime, qmp: QMPClient) -> None:
        self._watch(rec.id, rt)

    async def stopped(self, rec: VMRecord) -> None:
        task = self._watchers.pop(rec.id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._facts.pop(rec.id, None)
        self._wake.pop(rec.id, None)

    async def deleted(self, rec: VMRecord) -> None:
        await self.stopped(rec)

    def describe(self, rec: VMRecord, rt: Runtime | None) -> dict[str, Any]:
        """Cached facts; never waits for the agent. May run in a worker thread."""
        if rt is None:
            return {}
        facts = self._facts.get(rec.id)
        if facts is None or time.time() - facts.checked_at > STALE_S:
            self._poke(rec.id)
        return facts.as_dict() if facts else {"agent": "not checked yet"}

    def note(self, vm_id: str, facts: GuestFacts) -> None:
        """Facts learnt elsewhere (an exec that got an answer) count as a check too."""
        self._facts[vm_id] = facts

    # -- the watcher -------------------------------------------------------------------------
    def _watch(self, vm_id: str, rt: Runtime) -> None:
        self._loop = asyncio.get_running_loop()
        old = self._watchers.pop(vm_id, None)
        if old is not None:
            old.cancel()
        self._wake[vm_id] = asyncio.Event()
        sock = agent.agent_socket(Path(rt.qmp).parent)
        self._watchers[vm_id] = asyncio.create_task(self._run(vm_id, sock),
                                                    name=f"guest-agent-{vm_id}")

    async def _run(self, vm_id: str, sock: Path) -> None:
        misses = 0
        while True:
            facts = await fetch_facts(sock)
            self._facts[vm_id] = facts
            if facts.answering:
                misses, wait = 0, REFRESH_S
            else:
                wait = BACKOFF_S[min(misses, len(BACKOFF_S) - 1)]
                misses += 1
            wake = self._wake.get(vm_id)
            if wake is None:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    def _poke(self, vm_id: str) -> None:
        wake, loop = self._wake.get(vm_id), self._loop
        if wake is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    async def close(self) -> None:
        """The daemon stops: end the watchers (the VMs and their agents carry on)."""
        tasks = list(self._watchers.values())
        self._watchers.clear()
        self._wake.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
