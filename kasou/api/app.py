"""The REST API: a thin layer that parses requests into service calls.

Resources live under /api/v1/. Connections on the Unix socket (no peer address) are the
local administrator, guarded by the socket's file mode; TCP connections must carry the
bearer token.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kasou import __version__
from kasou.errors import AuthError, KasouError
from kasou.host.probe import HostInfo
from kasou.images.manifest import ImageManifest
from kasou.images.registry import list_images
from kasou.service.views import LogChunk, VMView
from kasou.service.vms import VMService
from kasou.spec import VMSpec


def _error(err: KasouError) -> JSONResponse:
    return JSONResponse(err.to_dict(), status_code=err.status)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        msg = "unknown field" if e.get("type") == "extra_forbidden" else str(e.get("msg", ""))
        errors.append({"field": ".".join(loc) or "body",
                       "message": msg.removeprefix("Value error, ")})
    first = errors[0] if errors else {"field": "body", "message": "invalid request"}
    body = {"error": "invalid", "message": f"{first['field']}: {first['message']}",
            "field": first["field"], "errors": errors}
    return JSONResponse(body, status_code=422)


def create_app(service: VMService, token: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    app = FastAPI(title="kasou", version=__version__, lifespan=lifespan)
    app.add_exception_handler(KasouError, lambda _r, e: _error(e))
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.middleware("http")
    async def auth(request: Request,
                   call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.scope.get("client") is not None and not _token_ok(request, token):
            return _error(AuthError("a valid bearer token is required on TCP"))
        return await call_next(request)

    app.include_router(_routes(service), prefix="/api/v1")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app


def _token_ok(request: Request, token: str | None) -> bool:
    if not token:
        return False
    got = request.headers.get("authorization", "")
    scheme, _, value = got.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), token.encode())


def _routes(svc: VMService) -> APIRouter:
    r = APIRouter()

    @r.get("/host")
    def host() -> HostInfo:
        return svc.host

    @r.get("/images")
    def images() -> list[ImageManifest]:
        return list_images(svc.images_root)

    @r.get("/vms")
    def list_vms() -> list[VMView]:
        return svc.list()

    @r.post("/vms", status_code=201)
    async def create_vm(spec: VMSpec) -> VMView:
        return await svc.create(spec.model_dump())

    @r.get("/vms/{name}")
    def show_vm(name: str) -> VMView:
        return svc.show(name)

    @r.delete("/vms/{name}", status_code=204)
    async def delete_vm(name: str) -> Response:
        await svc.delete(name)
        return Response(status_code=204)

    @r.post("/vms/{name}/start")
    async def start_vm(name: str) -> VMView:
        return await svc.start(name)

    @r.post("/vms/{name}/stop")
    async def stop_vm(name: str, force: bool = False,
                      timeout: float | None = Query(default=None, ge=0, le=3600)) -> VMView:
        return await svc.stop(name, force=force, timeout=timeout)

    @r.post("/vms/{name}/kill")
    async def kill_vm(name: str) -> VMView:
        return await svc.kill(name)

    @r.post("/vms/{name}/pause")
    async def pause_vm(name: str) -> VMView:
        return await svc.pause(name)

    @r.post("/vms/{name}/resume")
    async def resume_vm(name: str) -> VMView:
        return await svc.resume(name)

    @r.post("/vms/{name}/reboot")
    async def reboot_vm(name: str) -> VMView:
        return await svc.reboot(name)

    @r.get("/vms/{name}/logs")
    def vm_logs(name: str, offset: int = 0,
                limit: int = Query(default=1 << 20, ge=1, le=1 << 20)) -> LogChunk:
        return svc.logs(name, offset, limit)

    @r.get("/vms/{name}/console")
    def vm_console(name: str) -> dict[str, Any]:
        return {"socket": svc.console_socket(name)}

    return r
