"""The REST API: a thin layer that parses requests into service calls.

Resources live under /api/v1/. Who may call what is decided in kasou/api/security.py
(identity, rate limits, body limit, audit) and kasou/tenancy/policy.py (the role table).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from kasou import __version__
from kasou.api.routes import host as host_routes
from kasou.api.routes import tenancy as tenancy_routes
from kasou.api.routes import vms as vm_routes
from kasou.api.security import BodyLimit, Gate, authenticated, enforce_declared, error_response
from kasou.errors import KasouError
from kasou.service.platform import Platform
from kasou.tenancy.ratelimit import RateLimiter


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


def create_app(platform: Platform, limiter: RateLimiter | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await platform.startup()
        try:
            yield
        finally:
            await platform.shutdown()

    app = FastAPI(title="kasou", version=__version__, lifespan=lifespan,
                  dependencies=[Depends(enforce_declared)])
    app.state.tenancy = platform.tenancy
    app.add_exception_handler(KasouError, lambda _r, e: error_response(e))
    app.add_exception_handler(RequestValidationError, _validation_error)
    gate = Gate(platform.tenancy, limiter or RateLimiter())
    app.middleware("http")(gate.middleware)
    app.add_middleware(BodyLimit)

    app.include_router(host_routes.router(platform.vms), prefix="/api/v1")
    app.include_router(vm_routes.router(platform.vms), prefix="/api/v1")
    app.include_router(tenancy_routes.router(platform.tenancy, platform.vms), prefix="/api/v1")
    for extra in platform.routers:
        app.include_router(extra, prefix="/api/v1")

    @app.get("/healthz", dependencies=[authenticated()])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
