"""Who may reach which VM's screen, and where that screen's VNC socket is."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from kasou.console.tokens import ConsoleTokens
from kasou.engine.qmp import add_vnc_client, screendump
from kasou.errors import AuthError, InvalidSpec
from kasou.service.vms import VMService
from kasou.state import check
from kasou.store.base import DEFAULT_PROJECT, VMRecord

ImageFormat = Literal["png", "ppm"]


@dataclass(frozen=True)
class ConsoleGrant:
    vm: str
    id: str
    token: str
    expires_at: float
    path: str           # the WebSocket path, relative to the API's base URL


class ConsoleService:
    def __init__(self, vms: VMService, tokens: ConsoleTokens) -> None:
        self.vms = vms
        self.layout = vms.layout
        self.store = vms.store
        self.tokens = tokens
        self._passing: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def grant(self, ref: str, project: str = DEFAULT_PROJECT) -> ConsoleGrant:
        """A console token for a VM with a screen that is up now (the caller may operate it)."""
        rec = self.store.get_vm(ref, project)
        self._check_reachable(rec)
        token, exp = self.tokens.mint(rec.id)
        return ConsoleGrant(vm=rec.name, id=rec.id, token=token, expires_at=exp,
                            path=f"/api/v1/vms/{rec.name}/vnc")

    async def open_viewer(self, name: str, token: str) -> socket.socket:
        """A socket connected to VM `name`'s VNC server, for the bearer of `token`.
        AuthError when the token is forged, expired or for another VM; InvalidState when
        the VM is not up. QEMU gets the other end of a fresh socket pair over QMP."""
        rec = self.store.get_vm_by_id(self.tokens.vm_of(token))
        if rec.name != name:
            raise AuthError("console token is for another VM")
        self._check_reachable(rec)
        qmp = self.vms.supervisor(rec).qmp
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # One fd in flight per VM: QEMU attaches a passed fd to the next command.
            async with self._passing[rec.id]:
                await add_vnc_client(qmp, theirs.fileno(), f"vnc-{uuid.uuid4().hex[:8]}")
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def screenshot(self, ref: str, project: str = DEFAULT_PROJECT,
                         fmt: ImageFormat = "png") -> bytes:
        """The VM's screen as QEMU sees it (QMP screendump), as PNG or PPM bytes."""
        rec = self.store.get_vm(ref, project)
        self._check_reachable(rec)
        qmp = self.vms.supervisor(rec).qmp
        path = self.layout.vm_dir(rec.id) / f"screen-{uuid.uuid4().hex[:8]}.{fmt}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            async with self._passing[rec.id]:
                await screendump(qmp, fd, fmt)
            return path.read_bytes()
        finally:
            os.close(fd)
            path.unlink()

    @staticmethod
    def _check_reachable(rec: VMRecord) -> None:
        if not rec.spec.display:
            raise InvalidSpec(f"VM {rec.name} has no display (create it with --display)",
                              field="display")
        check(rec.name, rec.state, "console")
