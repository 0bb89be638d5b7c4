"""The REST API: a thin layer that parses requests into service calls.

Resources live under /api/v1/. Who may call what is decided in kasou/api/security.py
(identity, rate limits, body limit, audit) and kasou/tenancy/policy.py (the role table).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from kasou import __version__
from kasou.api import web
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


class ErrorBody(BaseModel):
    """Every error the API answers has this shape."""

    error: str
    message: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "Malformed request"), (401, "No valid token"),
        (403, "Not allowed, or over quota"), (404, "Not found"),
        (409, "Conflict with the current state"), (413, "Body too large"),
        (422, "Invalid input, naming the field"), (429, "Rate limited"))
}


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown path, wrong method) in kasou's error shape. For 405 the
    Allow header lists every method of every route at that path, not just the first match."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        allowed = set()
        for route in request.app.routes:
            regex = getattr(route, "path_regex", None)
            if regex is not None and regex.match(request.url.path):
                allowed |= set(getattr(route, "methods", None) or ())
        headers["Allow"] = ", ".join(sorted(allowed))
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": code, "message": str(exc.detail)},
                        status_code=exc.status_code, headers=headers)


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
    app.add_exception_handler(StarletteHTTPException, _http_error)
    gate = Gate(platform.tenancy, limiter or RateLimiter())
    app.middleware("http")(gate.middleware)
    app.add_middleware(BodyLimit)

    routers = [host_routes.router(platform.vms), vm_routes.router(platform.vms),
               tenancy_routes.router(platform.tenancy, platform.vms), *platform.routers]
    for r in routers:
        app.include_router(r, prefix="/api/v1", responses=ERRORS)
    for r in platform.root_routers:     # outside /api/v1, e.g. /metrics for Prometheus
        app.include_router(r, responses=ERRORS)

    @app.get("/healthz", dependencies=[authenticated()], responses=ERRORS)
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    web.mount(app)      # the dashboard at /ui/ (kasou/web)

    return app
