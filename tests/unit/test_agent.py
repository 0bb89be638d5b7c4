"""The guest agent client against a fake qemu-guest-agent on a real Unix socket.

The fake speaks QGA's protocol as QEMU 7.2's agent does: no greeting, 0xFF resets the
parser, guest-sync-delimited answers with 0xFF before its JSON, and a reply left over
from an earlier client may arrive first.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kasou.engine import agent
from kasou.engine.runtime import Runtime
from kasou.errors import AgentFailure, AgentUnavailable

Handler = Callable[[dict[str, Any]], Any]


class FakeAgent:
    def __init__(self, *, stale: bytes = b"", silent: bool = False) -> None:
        self.stale = stale          # written to each new client before anything else
        self.silent = silent        # a guest with no agent: never answers
        self.calls: list[str] = []
        self.log: list[int] = []          # which client sent each request
        self.connections = 0
        self.procs: dict[int, int] = {}   # guest pid -> status polls left
        self.frozen = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        me = self.connections
        try:
            writer.write(self.stale)
            while line := await reader.readline():
                if self.silent:
                    continue
                text = line.lstrip(b"\xff").strip()
                if not text:
                    continue
                request = json.loads(text)
                self.calls.append(request["execute"])
                self.log.append(me)
                writer.write(self.reply(request))
                await writer.drain()
        finally:
            writer.close()

    def reply(self, request: dict[str, Any]) -> bytes:
        command, args = request["execute"], request.get("arguments", {})
        if command == "guest-sync-delimited":
            return b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n"
        try:
            body: dict[str, Any] = {"return": self.answer(command, args)}
        except LookupError as e:
            body = {"error": {"class": "GenericError", "desc": str(e)}}
        if "id" in request:
            body["id"] = request["id"]
        return json.dumps(body).encode() + b"\n"

    def answer(self, command: str, args: dict[str, Any]) -> Any:
        if command == "guest-ping":
            return {}
        if command == "guest-exec":
            if args["path"] == "nosuch":
                raise LookupError("Failed to execute child process “nosuch” (No such file)")
            pid = 1000 + len(self.procs)
            self.procs[pid] = 2 if args["path"] == "slow" else 0
            return {"pid": pid}
        if command == "guest-exec-status":
            left = self.procs[args["pid"]]
            if left:
                self.procs[args["pid"]] = left - 1
                return {"exited": False}
            return {"exited": True, "exitcode": 3,
                    "out-data": base64.b64encode(b"out\x00bytes").decode(),
                    "err-data": base64.b64encode(b"err").decode()}
        if command == "guest-get-osinfo":
            return {"id": "debian", "name": "Debian GNU/Linux",
                    "pretty-name": "Debian GNU/Linux 12 (bookworm)",
                    "kernel-release": "6.1.0-56-cloud-amd64", "machine": "x86_64"}
        if command == "guest-network-get-interfaces":
            return [{"name": "lo", "ip-addresses": [
                        {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
                    {"name": "ens3", "hardware-address": "52:54:00:12:34:56", "ip-addresses": [
                        {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}]}]
        if command == "guest-fsfreeze-freeze":
            self.frozen = True
            return 2
        if command == "guest-fsfreeze-thaw":
            was, self.frozen = self.frozen, False
            return 2 if was else 0
        if command == "guest-fsfreeze-status":
            return "frozen" if self.frozen else "thawed"
        raise LookupError(f"The command {command} has not been found")


@asynccontextmanager
async def running(fake: FakeAgent, path: Path) -> AsyncIterator[Path]:
    server = await asyncio.start_unix_server(fake.serve, str(path))
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()


def runtime(run_dir: Path) -> Runtime:
    return Runtime(vm_id="v", pid=1, proc_start=1, argv=[], qmp=str(run_dir / "qmp.sock"),
                   console="", serial_log="", accel="tcg", machine="pc", started_at="")


def test_sync_skips_a_stale_reply_then_commands_work(tmp_path: Path) -> None:
    stale = b'{"return": {"pid": 7}}\n\xff{"return": 12345}\npartial {"ret'
    fake = FakeAgent(stale=stale)

    async def go() -> None:
        async with running(fake, tmp_path / "qga.sock") as sock, agent.session(sock) as s:
            info = await agent.get_osinfo(s)
            assert info.pretty_name == "Debian GNU/Linux 12 (bookworm)"
            ifaces = await agent.network_interfaces(s)
            assert [i.name for i in ifaces] == ["lo", "ens3"]
            assert ifaces[1].addresses[0].address == "10.0.2.15"
            assert ifaces[1].mac == "52:54:00:12:34:56"

    asyncio.run(go())
    assert fake.calls == ["guest-sync-delimited", "guest-get-osinfo",
                          "guest-network-get-interfaces"]


def test_exec_runs_to_completion_with_binary_output(tmp_path: Path) -> None:
    fake = FakeAgent()

    async def go() -> tuple[int, agent.ExecStatus]:
        async with running(fake, tmp_path / "qga.sock") as sock:
            return await agent.run(sock, ["slow", "arg"], timeout=10, stdin=b"in")

    pid, status = asyncio.run(go())
    assert pid == 1000
    assert status.exited and status.exitcode == 3 and status.signal is None
    assert status.stdout == b"out\x00bytes" and status.stderr == b"err"
    assert fake.calls.count("guest-exec-status") == 3


def test_a_refused_command_is_an_agent_failure(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(FakeAgent(), tmp_path / "qga.sock") as sock:
            await agent.exec_begin(sock, ["nosuch"])

    with pytest.raises(AgentFailure, match="guest-exec failed: Failed to execute"):
        asyncio.run(go())


def test_no_agent_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    async def go() -> bool:
        async with running(FakeAgent(silent=True), tmp_path / "qga.sock") as sock:
            with pytest.raises(AgentUnavailable, match="no guest agent answers"):
                async with agent.session(sock, sync_timeout=0.3):
                    pass
            return await agent.agent_available(runtime(tmp_path), timeout=0.3)

    assert asyncio.run(asyncio.wait_for(go(), 10)) is False


def test_missing_channel_says_so(tmp_path: Path) -> None:
    async def go() -> None:
        async with agent.session(tmp_path / "qga.sock"):
            pass

    with pytest.raises(AgentUnavailable, match="has no guest agent channel"):
        asyncio.run(go())
    assert asyncio.run(agent.agent_available(runtime(tmp_path))) is False


def test_freeze_and_thaw_for_snapshots(tmp_path: Path) -> None:
    fake = FakeAgent()

    async def go() -> tuple[bool, int, int, int]:
        async with running(fake, tmp_path / "qga.sock"):
            rt = runtime(tmp_path)
            ok = await agent.agent_available(rt)
            frozen = await agent.fsfreeze(rt)
            thawed = await agent.fsthaw(rt)
            again = await agent.fsthaw(rt)
            return ok, frozen, thawed, again

    assert asyncio.run(go()) == (True, 2, 2, 0)


def test_sessions_to_one_socket_take_turns(tmp_path: Path) -> None:
    fake = FakeAgent()

    async def go() -> None:
        async with running(fake, tmp_path / "qga.sock") as sock:
            async def one() -> None:
                async with agent.session(sock) as s:
                    await agent.ping(s)
                    await asyncio.sleep(0.05)
            await asyncio.gather(*(one() for _ in range(5)))

    asyncio.run(go())
    # each client's requests arrive in one run: no session started inside another
    runs = [c for i, c in enumerate(fake.log) if i == 0 or fake.log[i - 1] != c]
    assert sorted(runs) == [1, 2, 3, 4, 5]
    assert fake.calls.count("guest-ping") == 5


def test_show_facts_come_from_the_watcher_without_waiting(tmp_path: Path) -> None:
    from kasou.guest.hook import GuestAgentHook
    from kasou.store.base import VMRecord

    rec = VMRecord.model_validate({"id": "v", "name": "web", "created_at": "",
                                   "updated_at": "", "spec": {"name": "web", "image": "x"}})
    rt = runtime(tmp_path)
    hook = GuestAgentHook()

    async def go() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with running(FakeAgent(), tmp_path / "qga.sock"):
            await hook.started(rec, rt, None, None)  # type: ignore[arg-type]
            first = hook.describe(rec, rt)           # never waits for the agent
            for _ in range(100):
                if hook.describe(rec, rt).get("agent") == "answering":
                    break
                await asyncio.sleep(0.05)
            seen = hook.describe(rec, rt)
            await hook.stopped(rec)
            return first, seen, hook.describe(rec, None)

    first, seen, after = asyncio.run(go())
    assert first == {"agent": "not checked yet"}
    assert seen["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert seen["ips"] == ["10.0.2.15"] and seen["addresses"] == {"ens3": ["10.0.2.15/24"]}
    assert after == {}
