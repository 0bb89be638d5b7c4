"""Who is calling, may they, how much, and the record of it.

- Unix socket (no peer address): the local administrator; the socket's mode guards it.
- TCP: a bearer token (401 without a valid one), rate limited per token (429).
- Bodies over MAX_BODY are refused (413) before they are read whole.
- Every route declares the verb it needs with `require(Verb.X)`; a route that declares
  none is open to administrators only, so a forgotten check fails closed.
- Every state-changing call and every refusal is appended to the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kasou.api.web import is_public
from kasou.errors import AuthError, Forbidden, KasouError, RateLimited, TooLarge
from kasou.paths import NAME_PATTERN, check_name
from kasou.store.base import DEFAULT_PROJECT
from kasou.tenancy.models import Principal
from kasou.tenancy.policy import Verb, authorize
from kasou.tenancy.ratelimit import RateLimiter
from kasou.tenancy.service import TenancyService

MAX_BODY = 1 << 20
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSALS = frozenset({401, 403, 413, 429})


def error_response(err: KasouError) -> JSONResponse:
    headers = {}
    if isinstance(err, RateLimited):
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    return JSONResponse(err.to_dict(), status_code=err.status, headers=headers)


class BodyLimit:
    """Pure ASGI: refuse a declared Content-Length over the limit, count what streams in."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await error_response(self._too_large())(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise self._too_large()
            return msg

        await self.app(scope, counted, send)

    def _too_large(self) -> TooLarge:
        return TooLarge(f"request body larger than {self.limit} bytes")


@dataclass
class Gate:
    tenancy: TenancyService
    limiter: RateLimiter

    def principal(self, request: Request) -> Principal:
        client = request.scope.get("client")
        if client is None:
            return self.tenancy.local_admin()
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise AuthError("a bearer token is required on TCP")
        who = self.tenancy.authenticate(value.strip(), source=str(client[0]))
        wait = self.limiter.take(who.token_id or who.name)
        if wait > 0:
            raise RateLimited(f"too many requests for token {who.token_id}; retry in "
                              f"{wait:.1f}s", retry_after=wait)
        return who

    async def middleware(self, request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if is_public(request.url.path):      # the dashboard's static files (kasou/api/web.py)
            return await call_next(request)
        try:
            request.state.principal = self.principal(request)
        except KasouError as e:
            self._audit(request, None, e.status, e.message)
            return error_response(e)
        try:
            response = await call_next(request)
        except TooLarge as e:
            response = error_response(e)
        if request.method in MUTATING or response.status_code in REFUSALS:
            self._audit(request, request.state.principal, response.status_code, None)
        return response

    def _audit(self, request: Request, who: Principal | None, status: int,
               detail: str | None) -> None:
        action = f"{request.method} {_route_template(request)}"
        params = request.scope.get("path_params") or {}
        client = request.scope.get("client")
        self.tenancy.record(
            actor=who.name if who else "anonymous",
            source="unix" if client is None else str(client[0]),
            project=getattr(request.state, "project", None)
            or request.headers.get("x-kasou-project") or request.query_params.get("project"),
            action=action, target=params.get("name") or params.get("ref"),
            status=status, detail=detail)


def _route_template(request: Request) -> str:
    """'/api/v1/vms/{name}' rather than the concrete path: the audit groups by action."""
    template = getattr(request.scope.get("route"), "path", None)
    if template is None:
        return request.url.path
    prefix = "/api/v1"
    if request.url.path.startswith(prefix) and not template.startswith(prefix):
        template = prefix + template
    return str(template)


NameParam = Annotated[str, Path(pattern=NAME_PATTERN, description="A name or an id.")]


@dataclass(frozen=True)
class Ctx:
    """The caller and the project a request acts in."""

    principal: Principal
    project: str


def _default_project(who: Principal) -> str:
    if not who.admin and len(who.roles) == 1:
        return next(iter(who.roles))
    return DEFAULT_PROJECT


def require(verb: Verb) -> Any:
    """A dependency: resolve the project, check the caller may `verb` in it, return Ctx."""

    def dependency(request: Request,
                   project: str | None = Query(default=None, pattern=NAME_PATTERN,
                                               description="Project to act in (or the "
                                               "X-Kasou-Project header).")) -> Ctx:
        who: Principal = request.state.principal
        name = project or request.headers.get("x-kasou-project") or _default_project(who)
        check_name(name, "project")
        request.state.project = name
        authorize(who, verb, name)           # before existence: no leak of other projects
        request.app.state.tenancy.require_project(name)
        return Ctx(who, name)

    dependency.kasou_verb = verb  # type: ignore[attr-defined]
    return Depends(dependency)


def authenticated() -> Any:
    """Any caller with a valid token may use the route (host facts, image list)."""

    def dependency() -> None:
        return None

    dependency.kasou_verb = "any"  # type: ignore[attr-defined]
    return Depends(dependency)


def caller() -> Any:
    """A dependency giving the authenticated caller; the route checks the verb itself
    (for routes whose project is in the path, not the query)."""

    def dependency(request: Request) -> Principal:
        who: Principal = request.state.principal
        return who

    dependency.kasou_verb = "any"  # type: ignore[attr-defined]
    return Depends(dependency)


def _declared(route: Any) -> bool:
    stack = list(getattr(getattr(route, "dependant", None), "dependencies", []))
    while stack:
        dep = stack.pop()
        if getattr(dep.call, "kasou_verb", None):
            return True
        stack.extend(dep.dependencies)
    return False


def enforce_declared(request: HTTPConnection) -> None:
    """App-wide dependency: routes without a declared verb are for administrators only.
    WebSockets pass no HTTP middleware, so they have no principal: each must declare how
    it authorizes (e.g. the console's signed token), or it is refused."""
    declared = _declared(request.scope.get("route"))
    if request.scope["type"] == "websocket":
        if not declared:
            raise Forbidden(f"{request.url.path} is for administrators")
        return
    who: Principal = request.state.principal
    if not who.admin and not declared:
        raise Forbidden(f"{request.url.path} is for administrators")
