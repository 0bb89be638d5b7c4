"""`kasou serve`: the daemon. One process, one event loop: the API server and every VM's
QMP supervisor share it.

The Unix socket is created with mode 0600 (the local administrator); a TCP listener is
opened only when asked for, and then every request needs the token in api.token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from kasou.api.app import create_app
from kasou.errors import InvalidSpec
from kasou.paths import Layout
from kasou.service.platform import Settings, build_platform

log = logging.getLogger("kasou")


@dataclass(frozen=True)
class ServeOptions:
    listen_tcp: tuple[str, int] | None = None
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    reserved_memory_mib: int = 512


def parse_listen(value: str) -> tuple[str, int]:
    """'tcp:HOST:PORT' -> (host, port)."""
    kind, _, rest = value.partition(":")
    host, _, port = rest.rpartition(":")
    if kind != "tcp" or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidSpec(f"listen: {value!r} is not tcp:HOST:PORT", field="listen")
    return host.strip("[]"), int(port)


def load_or_create_token(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _unix_socket(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    return sock


def _tcp_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def serve(layout: Layout, opts: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qemu.qmp logs every monitor EOF at INFO; a VM exiting is reported by kasou itself.
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
    platform = build_platform(layout, Settings(
        cpu_overcommit=opts.cpu_overcommit, memory_overcommit=opts.memory_overcommit,
        reserved_memory_mib=opts.reserved_memory_mib))
    sockets = [_unix_socket(layout.socket)]
    token = None
    if opts.listen_tcp:
        token = load_or_create_token(layout.token_file)
        sockets.append(_tcp_socket(*opts.listen_tcp))
    app = create_app(platform, token)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    layout.daemon_pid.write_text(f"{os.getpid()}\n")
    log.info("kasou serving on %s%s", layout.socket,
             f" and tcp:{opts.listen_tcp[0]}:{opts.listen_tcp[1]}" if opts.listen_tcp else "")
    try:
        asyncio.run(server.serve(sockets=sockets))
    finally:
        with contextlib.suppress(FileNotFoundError):
            layout.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            layout.daemon_pid.unlink()
