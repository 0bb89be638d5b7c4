"""Guest agent operations on a VM: run a command inside it, ask it about itself."""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kasou.engine import agent
from kasou.errors import AgentFailure, InvalidSpec, InvalidState
from kasou.guest.hook import GuestAgentHook, query_facts
from kasou.service.vms import VMService
from kasou.state import VMState
from kasou.store.base import DEFAULT_PROJECT, VMRecord

MAX_EXEC_TIMEOUT_S = 3600.0
MAX_STDIN = 512 << 10


class ExecRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(min_length=1, max_length=4096)
    timeout: float = Field(default=60.0, gt=0, le=MAX_EXEC_TIMEOUT_S)
    stdin_base64: str | None = None

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0]:
            raise ValueError("the program name is empty")
        if any("\x00" in a for a in v):
            raise ValueError("arguments cannot contain NUL bytes")
        return v

    @field_validator("stdin_base64")
    @classmethod
    def _stdin(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            data = base64.b64decode(v, validate=True)
        except ValueError:
            raise ValueError("is not base64") from None
        if len(data) > MAX_STDIN:
            raise ValueError(f"at most {MAX_STDIN} bytes of input")
        return v


class ExecResult(BaseModel):
    pid: int                      # in the guest
    exitcode: int | None
    signal: int | None
    stdout_base64: str
    stderr_base64: str
    truncated: bool               # the agent keeps at most 16 MiB of each stream


class GuestService:
    def __init__(self, vms: VMService, hook: GuestAgentHook) -> None:
        self.vms = vms
        self.hook = hook

    def _live(self, ref: str, project: str, action: str) -> tuple[VMRecord, Path]:
        rec = self.vms.store.get_vm(ref, project)
        if rec.state != VMState.RUNNING:
            raise InvalidState(rec.name, rec.state.value, action, [VMState.RUNNING.value])
        rt = self.vms.supervisor(rec).rt
        return rec, agent.agent_socket(Path(rt.qmp).parent)

    async def exec(self, ref: str, req: ExecRequest,
                   project: str = DEFAULT_PROJECT) -> ExecResult:
        _, sock = self._live(ref, project, "exec")
        stdin = base64.b64decode(req.stdin_base64) if req.stdin_base64 else None
        try:
            pid = await agent.exec_begin(sock, req.command, stdin)
        except AgentFailure as e:   # the agent answered: the guest could not start it
            raise InvalidSpec(f"command: the guest cannot run {req.command[0]!r}: "
                              f"{e.message.split('failed: ', 1)[-1]}",
                              field="command") from None
        status = await agent.exec_wait(sock, pid, timeout=req.timeout)
        return ExecResult(pid=pid, exitcode=status.exitcode, signal=status.signal,
                          stdout_base64=base64.b64encode(status.stdout).decode(),
                          stderr_base64=base64.b64encode(status.stderr).decode(),
                          truncated=status.truncated)

    async def info(self, ref: str, project: str = DEFAULT_PROJECT) -> dict[str, object]:
        """Ask the agent now (not the cached facts): OS, addresses, or AgentUnavailable."""
        rec, sock = self._live(ref, project, "ask the guest agent of")
        facts = await query_facts(sock)
        self.hook.note(rec.id, facts)
        return facts.as_dict()
