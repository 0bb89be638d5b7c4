"""`kasou serve`: the daemon. One process, one event loop: the API server and every VM's
QMP supervisor share it.

The Unix socket is created with mode 0600 (the local administrator); a TCP listener is
opened only when asked for (optionally with TLS), and then every request needs a user's
token. The first time TCP is opened, an `admin` user is made and its token written to
$KASOU_HOME/api.token (mode 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from kasou.api import tls
from kasou.api.app import create_app
from kasou.errors import InvalidSpec
from kasou.paths import Layout
from kasou.service.platform import Settings, build_platform
from kasou.tenancy.models import UserSpec
from kasou.tenancy.ratelimit import RateLimiter
from kasou.tenancy.service import TenancyService

log = logging.getLogger("kasou")


@dataclass(frozen=True)
class ServeOptions:
    listen_tcp: tuple[str, int] | None = None
    cpu_overcommit: float = 4.0
    memory_overcommit: float = 1.0
    reserved_memory_mib: int = 512
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    rate: float = 20.0
    metrics_interval: float = 5.0
    sandbox: bool = True
    burst: float = 100.0


class _Server(uvicorn.Server):
    """Two servers share one loop; the daemon handles signals for both itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def parse_listen(value: str) -> tuple[str, int]:
    """'tcp:HOST:PORT' -> (host, port)."""
    kind, _, rest = value.partition(":")
    host, _, port = rest.rpartition(":")
    if kind != "tcp" or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidSpec(f"listen: {value!r} is not tcp:HOST:PORT", field="listen")
    return host.strip("[]"), int(port)


def bootstrap_admin(tenancy: TenancyService, token_file: Path) -> None:
    """With no users yet, make `admin` and write its token where only root can read it."""
    if tenancy.store.list_users():
        return
    tenancy.create_user(UserSpec(name="admin", admin=True))
    new = tenancy.create_token("admin", expires_days=None, description="bootstrap admin token")
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new.token + "\n")
    log.info("made user admin; its token is in %s", token_file)


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


def _tls(layout: Layout, opts: ServeOptions) -> tuple[Path, Path] | None:
    if opts.tls_cert or opts.tls_key:
        if not (opts.tls_cert and opts.tls_key):
            raise InvalidSpec("tls_key: give both --tls-cert and --tls-key", field="tls_key")
        return tls.check_pair(opts.tls_cert, opts.tls_key)
    if opts.tls_self_signed and opts.listen_tcp:
        return tls.self_signed(layout.root / "tls", opts.listen_tcp[0])
    return None


def serve(layout: Layout, opts: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qemu.qmp logs every monitor EOF at INFO; a VM exiting is reported by kasou itself.
    logging.getLogger("qemu.qmp").setLevel(logging.WARNING)
    pair = _tls(layout, opts)
    platform = build_platform(layout, Settings(
        cpu_overcommit=opts.cpu_overcommit, memory_overcommit=opts.memory_overcommit,
        reserved_memory_mib=opts.reserved_memory_mib, metrics_interval=opts.metrics_interval,
        sandbox=opts.sandbox))
    app = create_app(platform, RateLimiter(rate=opts.rate, burst=opts.burst))
    servers = [(_Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                       lifespan="on")), [_unix_socket(layout.socket)])]
    if opts.listen_tcp:
        bootstrap_admin(platform.tenancy, layout.token_file)
        tcp = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                             ssl_certfile=str(pair[0]) if pair else None,
                             ssl_keyfile=str(pair[1]) if pair else None)
        servers.append((_Server(tcp), [_tcp_socket(*opts.listen_tcp)]))
    layout.daemon_pid.write_text(f"{os.getpid()}\n")
    where = f" and {'https' if pair else 'http'}://{opts.listen_tcp[0]}:{opts.listen_tcp[1]}" \
        if opts.listen_tcp else ""
    log.info("kasou serving on %s%s", layout.socket, where)
    try:
        asyncio.run(_run(servers))
    finally:
        with contextlib.suppress(FileNotFoundError):
            layout.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            layout.daemon_pid.unlink()


async def _run(servers: list[tuple[_Server, list[socket.socket]]]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server, _ in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    # The Unix server runs the app's lifespan (re-attaching VMs) before the TCP one opens.
    first, rest = servers[0], servers[1:]
    task = asyncio.create_task(first[0].serve(sockets=first[1]))
    while not first[0].started and not task.done():
        await asyncio.sleep(0.02)
    await asyncio.gather(task, *(s.serve(sockets=socks) for s, socks in rest))
