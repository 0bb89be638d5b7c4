"""The supervisor against a fake QMP server on a real Unix socket (no QEMU)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

from kasou.engine.process import proc_start_time
from kasou.engine.runtime import Runtime
from kasou.service.supervisor import ExitInfo, Supervisor


class FakeQMP:
    """Speaks just enough QMP: greeting, capabilities, query-status; sends events on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.commands: list[str] = []

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._send({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0},
                                        "package": ""}, "capabilities": []}})
        self.connected.set()
        buf = ""
        decoder = json.JSONDecoder()
        while chunk := await reader.read(4096):
            buf += chunk.decode()
            while buf.strip():
                try:   # QMP is a JSON stream: messages need not end in a newline
                    msg, end = decoder.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break
                buf = buf.lstrip()[end:]
                self._reply(msg)

    def _reply(self, msg: dict[str, Any]) -> None:
        self.commands.append(msg["execute"])
        ret: Any = {}
        if msg["execute"] == "query-status":
            ret = {"status": "running", "running": True}
        reply: dict[str, Any] = {"return": ret}
        if "id" in msg:
            reply["id"] = msg["id"]
        self._send(reply)

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(json.dumps(obj).encode() + b"\n")

    def event(self, name: str, data: dict[str, Any] | None = None) -> None:
        self._send({"event": name, "data": data or {},
                    "timestamp": {"seconds": 0, "microseconds": 0}})

    async def hang_up(self) -> None:
        assert self.writer is not None
        self.writer.close()
        self.server.close()


def runtime(qmp_path: Path, proc: subprocess.Popen[bytes]) -> Runtime:
    return Runtime(vm_id="vm1", pid=proc.pid, proc_start=proc_start_time(proc.pid) or 0,
                   argv=["qemu"], qmp=str(qmp_path), console="c", serial_log="s",
                   accel="tcg", machine="pc", started_at="now")


async def _scenario(tmp_path: Path, shutdown_first: bool) -> tuple[list[str], ExitInfo]:
    fake = FakeQMP(tmp_path / "qmp.sock")
    await fake.start()
    proc = subprocess.Popen(["sleep", "60"])   # stands in for the QEMU process
    events: list[str] = []
    exits: list[ExitInfo] = []

    async def on_event(vm_id: str, name: str, data: dict[str, Any]) -> None:
        events.append(name)

    async def on_exit(vm_id: str, info: ExitInfo) -> None:
        exits.append(info)

    sup = await Supervisor.attach(runtime(fake.path, proc), on_event, on_exit)
    fake.event("STOP")
    fake.event("RESUME")
    if shutdown_first:
        fake.event("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
    await asyncio.sleep(0.2)
    proc.kill()
    proc.wait()
    await fake.hang_up()
    await asyncio.wait_for(sup.gone.wait(), 5)
    return events, exits[0]


def test_events_reach_the_handler_and_clean_exit(tmp_path: Path) -> None:
    events, info = asyncio.run(_scenario(tmp_path, shutdown_first=True))
    assert events == ["STOP", "RESUME", "SHUTDOWN"]
    assert info.clean and "guest shut down" in info.reason


def test_exit_without_shutdown_is_a_crash(tmp_path: Path) -> None:
    events, info = asyncio.run(_scenario(tmp_path, shutdown_first=False))
    assert events == ["STOP", "RESUME"]
    assert not info.clean and "exited unexpectedly" in info.reason
