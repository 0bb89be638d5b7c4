"""/api/v1/vms/{name}/console-token and the WebSocket that carries a VM's screen (VNC).

The WebSocket is authorized by the console token alone (browsers cannot set headers on a
WebSocket): the token is minted by POST console-token for a caller allowed to operate
the VM, is signed, names one VM and expires within a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from fastapi import APIRouter, Depends, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect

from kasou.api.security import Ctx, NameParam, error_response, require
from kasou.console.service import ConsoleService, ImageFormat
from kasou.errors import KasouError
from kasou.tenancy.policy import Verb

CHUNK = 1 << 16
MEDIA = {"png": "image/png", "ppm": "image/x-portable-pixmap"}


def router(console: ConsoleService) -> APIRouter:
    r = APIRouter()

    @r.post("/vms/{name}/console-token")
    def console_token(name: NameParam, ctx: Ctx = require(Verb.OPERATE)) -> dict[str, Any]:
        grant = console.grant(name, ctx.project)
        return {"vm": grant.vm, "id": grant.id, "token": grant.token,
                "expires_at": grant.expires_at, "path": grant.path,
                "url": f"{grant.path}?token={grant.token}"}

    @r.get("/vms/{name}/screenshot", response_class=Response,
           responses={200: {"content": {"image/png": {}, "image/x-portable-pixmap": {}}}})
    async def screenshot(name: NameParam, format: ImageFormat = "png",
                         ctx: Ctx = require(Verb.READ)) -> Response:
        data = await console.screenshot(name, ctx.project, format)
        return Response(data, media_type=MEDIA[format])

    @r.websocket("/vms/{name}/vnc", dependencies=[token_checked_inside()])
    async def vnc(ws: WebSocket, name: str, token: str = "") -> None:
        try:
            viewer = await console.open_viewer(name, token)
        except KasouError as e:
            await _refuse(ws, error_response(e))
            return
        try:
            reader, writer = await asyncio.open_unix_connection(sock=viewer)
        except OSError as e:
            viewer.close()
            await _refuse(ws, JSONResponse({"error": "unavailable", "message":
                                            f"VM {name}'s screen is not reachable: {e}"}, 503))
            return
        subprotocols = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="binary" if "binary" in subprotocols else None)
        await _pipe(ws, reader, writer)

    return r


def token_checked_inside() -> Any:
    """Declares (for enforce_declared) that the route checks a console token itself."""

    def dependency() -> None:
        return None

    dependency.kasou_verb = "console-token"  # type: ignore[attr-defined]
    return Depends(dependency)


async def _refuse(ws: WebSocket, response: JSONResponse) -> None:
    """Refuse the handshake with an HTTP answer (the browser sees the status), or close."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(response)
    else:
        await ws.close(code=1008)


async def _pipe(ws: WebSocket, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    async def to_vm() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def to_browser() -> None:
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)

    tasks = [asyncio.create_task(to_vm()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, OSError,
                                     RuntimeError):
                await t
        writer.close()
        with contextlib.suppress(OSError, RuntimeError, WebSocketDisconnect):
            await ws.close()
