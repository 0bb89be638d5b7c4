"""Shared pieces of the CLI: calling the daemon, failing with one line, printing."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import typer

from kasou.cli.client import ApiError, Client, DaemonUnavailable
from kasou.errors import KasouError

JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise typer.Exit(code)


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; turn every expected failure into one line on stderr."""
    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        detail = e.body.get("errors") or []
        extra = [f"  {d['field']}: {d['message']}" for d in detail[1:]]
        fail("\n".join([str(e), *extra]))
    except DaemonUnavailable as e:
        fail(str(e))
    except KasouError as e:
        fail(e.message)


def client() -> Client:
    return Client()
