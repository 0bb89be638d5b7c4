"""The web dashboard: static files from kasou/web (noVNC vendored in kasou/web/vendor),
served at /ui/. The files hold no secrets and no logic of their own; the page calls the
same REST API as the CLI with the token its user enters, so they are served without one."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
PREFIX = "/ui"


def is_public(path: str) -> bool:
    """Paths served without a token: the dashboard's static files and the redirect to them."""
    return path in ("/", PREFIX) or path.startswith(PREFIX + "/")


def _home(_: Request) -> RedirectResponse:
    return RedirectResponse(PREFIX + "/", status_code=307)


def mount(app: FastAPI) -> None:
    app.mount(PREFIX, StaticFiles(directory=WEB_DIR, html=True), name="web")
    # A plain Starlette route: not part of the API, so not in the OpenAPI schema.
    app.router.add_route("/", _home, methods=["GET"], include_in_schema=False)
