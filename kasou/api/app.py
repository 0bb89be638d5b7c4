"""The REST API: a thin layer that parses requests into service calls.

Resources live under /api/v1/. Connections on the Unix socket (no peer address) are the
local administrator, guarded by the socket's file mode; TCP connections must carry the
bearer token.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kasou import __version__
from kasou.api.routes import host as host_routes
from kasou.api.routes import vms as vm_routes
from kasou.errors import AuthError, KasouError
from kasou.service.platform import Platform


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


def create_app(platform: Platform, token: str | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.startup()
        try:
            yield
        finally:
            await platform.shutdown()

    app = FastAPI(title="kasou", version=__version__, lifespan=lifespan)
    app.add_exception_handler(KasouError, lambda _r, e: _error(e))
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.middleware("http")
    async def auth(request: Request,
                   call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.scope.get("client") is not None and not _token_ok(request, token):
            return _error(AuthError("a valid bearer token is required on TCP"))
        return await call_next(request)

    app.include_router(host_routes.router(platform.vms), prefix="/api/v1")
    app.include_router(vm_routes.router(platform.vms), prefix="/api/v1")
    for extra in platform.routers:
        app.include_router(extra, prefix="/api/v1")

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
