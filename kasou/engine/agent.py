"""Typed calls to qemu-guest-agent (QGA) over the VM's virtio-serial channel.

The channel is a QEMU socket chardev at <run dir>/qga.sock wired to the virtserialport
`org.qemu.guest_agent.0` (see `agent_args` in argv.py). QGA speaks QMP's JSON but with no
greeting, and a reply from an earlier, abandoned request may still be on its way; so each
session first sends 0xFF (which resets the agent's parser) and `guest-sync-delimited` with a
random id, and discards everything up to the 0xFF the agent puts before its answer. That
resync is why this is a small client of its own rather than `qemu.qmp`'s QMPClient, whose
line parser cannot skip the delimiter byte.

A server chardev takes one client at a time (a second one waits, unread, in the backlog),
so sessions to one socket are serialised by a lock. Every wait has a timeout: a guest with
no agent (the `tiny` image) gives AgentUnavailable within seconds, never a hang.

The interface other areas use (storage freezes file systems around snapshots):

    await agent_available(rt) -> bool
    await fsfreeze(rt) -> int      # file systems frozen
    await fsthaw(rt) -> int        # file systems thawed
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kasou.engine.runtime import Runtime
from kasou.errors import AgentFailure, AgentUnavailable

__all__ = [
    "AGENT_PORT",
    "AGENT_SOCKET",
    "AgentSession",
    "ExecStatus",
    "GuestInterface",
    "OSInfo",
    "agent_available",
    "agent_socket",
    "exec_begin",
    "exec_start",
    "exec_status",
    "exec_wait",
    "fsfreeze",
    "fsfreeze_status",
    "fsthaw",
    "get_osinfo",
    "network_interfaces",
    "ping",
    "run",
    "session",
]

AGENT_SOCKET = "qga.sock"
AGENT_PORT = "org.qemu.guest_agent.0"     # the name qemu-guest-agent looks for

SYNC_TIMEOUT = 3.0          # a live agent answers guest-sync in milliseconds, even under TCG
CALL_TIMEOUT = 30.0
FREEZE_TIMEOUT = 60.0       # freezing flushes every dirty page of every file system
_READ_LIMIT = 64 << 20      # guest-exec-status carries up to 16 MiB of output, base64'd
_DELIMITER = b"\xff"

# Per event loop, so a lock is never awaited from a loop it was not made in.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, defaultdict[str, asyncio.Lock]] = \
    weakref.WeakKeyDictionary()


def _lock(where: str) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    return _locks.setdefault(loop, defaultdict(asyncio.Lock))[where]


def agent_socket(run_dir: Path) -> Path:
    return run_dir / AGENT_SOCKET


def _socket_of(rt: Runtime) -> Path:
    return agent_socket(Path(rt.qmp).parent)


class AgentSession:
    """One conversation with the agent, already in sync. Get one from `session()`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def sync(self, timeout: float) -> None:
        """Reset the agent's parser and skip whatever an earlier client left unread."""
        token = random.randrange(1, 1 << 31)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        self._writer.write(_DELIMITER + json.dumps(request).encode() + b"\n")
        try:
            await asyncio.wait_for(self._await_sync(token), timeout)
        except TimeoutError:
            raise AgentUnavailable(f"no guest agent answers in this VM within {timeout:g} s: "
                                   "the guest has no qemu-guest-agent, or it is not running "
                                   "(yet)") from None
        except (OSError, EOFError, asyncio.IncompleteReadError) as e:
            raise AgentUnavailable(f"the guest agent channel closed: {e}") from e

    async def _await_sync(self, token: int) -> None:
        while True:
            await self._reader.readuntil(_DELIMITER)
            line = await self._reader.readline()
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and message.get("return") == token:
                    return

    async def call(self, command: str, args: dict[str, Any] | None = None,
                   timeout: float = CALL_TIMEOUT) -> Any:
        """Run one command; its `return` value, or AgentFailure naming the command."""
        request: dict[str, Any] = {"execute": command, "id": command}
        if args:
            request["arguments"] = args
        self._writer.write(json.dumps(request).encode() + b"\n")
        try:
            reply = await asyncio.wait_for(self._reply(command), timeout)
        except TimeoutError:
            raise AgentFailure(f"guest agent: {command} got no answer within {timeout:g} s"
                               ) from None
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            raise AgentFailure(f"guest agent: {command} failed: the channel broke ({e})"
                               ) from e
        if "error" in reply:
            desc = reply["error"].get("desc") or reply["error"].get("class") or "error"
            raise AgentFailure(f"guest agent: {command} failed: {desc}")
        return reply.get("return")

    async def _reply(self, command: str) -> dict[str, Any]:
        while True:
            line = await self._reader.readline()
            if not line:
                raise EOFError("the agent closed the channel")
            message = json.loads(line.lstrip(_DELIMITER))
            # The agent echoes our id; anything else (no return/error) is not our reply.
            if isinstance(message, dict) and ("return" in message or "error" in message) \
                    and message.get("id", command) == command:
                return message

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def session(socket_path: Path, sync_timeout: float = SYNC_TIMEOUT
                  ) -> AsyncIterator[AgentSession]:
    """Connect (waiting for other clients of this socket), sync, yield, disconnect."""
    where = str(socket_path)
    async with _lock(where):
        if not socket_path.exists():
            raise AgentUnavailable("this VM has no guest agent channel (is it running?)")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(where, limit=_READ_LIMIT), sync_timeout)
        except (OSError, TimeoutError) as e:
            raise AgentUnavailable(f"cannot connect to the guest agent channel: "
                                   f"{getattr(e, 'strerror', None) or e}") from e
        agent = AgentSession(reader, writer)
        try:
            await agent.sync(sync_timeout)
            yield agent
        finally:
            await agent.close()


# -- typed wrappers -----------------------------------------------------------------------

@dataclass(frozen=True)
class ExecStatus:
    exited: bool
    exitcode: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool


@dataclass(frozen=True)
class IPAddress:
    family: str            # "ipv4" | "ipv6"
    address: str
    prefix: int


@dataclass(frozen=True)
class GuestInterface:
    name: str
    mac: str | None
    addresses: tuple[IPAddress, ...]


@dataclass(frozen=True)
class OSInfo:
    id: str | None
    name: str | None
    pretty_name: str | None
    version: str | None
    kernel_release: str | None
    machine: str | None


async def ping(agent: AgentSession) -> None:
    await agent.call("guest-ping")


async def exec_start(agent: AgentSession, argv: list[str], stdin: bytes | None = None,
                     env: list[str] | None = None) -> int:
    """Start argv[0] (searched in the guest's PATH) with output captured; the guest pid."""
    args: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if stdin:
        args["input-data"] = base64.b64encode(stdin).decode()
    if env:
        args["env"] = env
    reply = await agent.call("guest-exec", args)
    return int(reply["pid"])


async def exec_status(agent: AgentSession, pid: int) -> ExecStatus:
    r = await agent.call("guest-exec-status", {"pid": pid})
    return ExecStatus(
        exited=bool(r.get("exited")), exitcode=r.get("exitcode"), signal=r.get("signal"),
        stdout=base64.b64decode(r.get("out-data", "")),
        stderr=base64.b64decode(r.get("err-data", "")),
        truncated=bool(r.get("out-truncated") or r.get("err-truncated")),
    )


async def network_interfaces(agent: AgentSession) -> list[GuestInterface]:
    out = []
    for iface in await agent.call("guest-network-get-interfaces") or []:
        addresses = tuple(IPAddress(family=str(a.get("ip-address-type")),
                                    address=str(a.get("ip-address")),
                                    prefix=int(a.get("prefix", 0)))
                          for a in iface.get("ip-addresses", []))
        out.append(GuestInterface(name=str(iface.get("name")),
                                  mac=iface.get("hardware-address"), addresses=addresses))
    return out


async def get_osinfo(agent: AgentSession) -> OSInfo:
    r = await agent.call("guest-get-osinfo") or {}
    return OSInfo(id=r.get("id"), name=r.get("name"), pretty_name=r.get("pretty-name"),
                  version=r.get("version"), kernel_release=r.get("kernel-release"),
                  machine=r.get("machine"))


async def fsfreeze_status(agent: AgentSession) -> str:
    return str(await agent.call("guest-fsfreeze-status"))


# -- whole operations (one session each) ------------------------------------------------

async def exec_begin(socket_path: Path, argv: list[str], stdin: bytes | None = None) -> int:
    """Start a command in the guest (one session); its guest pid."""
    if not argv:
        raise AgentFailure("guest agent: no command to run")
    async with session(socket_path) as agent:
        return await exec_start(agent, argv, stdin)


async def exec_wait(socket_path: Path, pid: int, *, timeout: float = 60.0,
                    poll: float = 0.05) -> ExecStatus:
    """Poll a started command until it exits; its final status.

    The socket is let go of between polls, so a long command does not lock other users
    (a snapshot's fsfreeze) out of the agent.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = poll
    while True:
        async with session(socket_path) as agent:
            status = await exec_status(agent, pid)
        if status.exited:
            return status
        if loop.time() >= deadline:
            raise AgentFailure(f"guest agent: the command is still running after "
                               f"{timeout:g} s (guest pid {pid}); it was left running")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def run(socket_path: Path, argv: list[str], *, timeout: float = 60.0,
              stdin: bytes | None = None) -> tuple[int, ExecStatus]:
    """Run a command in the guest to completion: (guest pid, final status)."""
    pid = await exec_begin(socket_path, argv, stdin)
    return pid, await exec_wait(socket_path, pid, timeout=timeout)


async def agent_available(rt: Runtime, timeout: float = SYNC_TIMEOUT) -> bool:
    """True when the VM's guest agent answers now; never raises for a missing agent."""
    try:
        async with session(_socket_of(rt), timeout) as agent:
            await agent.call("guest-ping", timeout=timeout)
    except (AgentUnavailable, AgentFailure):
        return False
    return True


async def fsfreeze(rt: Runtime) -> int:
    """Freeze the guest's file systems (flushed, writes held); how many were frozen.

    Always pair with fsthaw() in a finally: a frozen guest stalls every writer.
    """
    async with session(_socket_of(rt)) as agent:
        return int(await agent.call("guest-fsfreeze-freeze", timeout=FREEZE_TIMEOUT))


async def fsthaw(rt: Runtime) -> int:
    """Thaw what fsfreeze froze; how many file systems were thawed (0 if none were)."""
    async with session(_socket_of(rt)) as agent:
        return int(await agent.call("guest-fsfreeze-thaw", timeout=FREEZE_TIMEOUT))
