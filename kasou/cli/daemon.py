"""`kasou serve` and `kasou daemon ...`: the daemon in the foreground or background."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from kasou.cli.common import fail
from kasou.errors import KasouError
from kasou.paths import Layout

app = typer.Typer(help="Run the kasou daemon in the background.", no_args_is_help=True)


def serve_cmd(
    listen: str | None = typer.Option(None, help="Also listen on tcp:HOST:PORT (token needed)."),
    cpu_overcommit: float = typer.Option(4.0, min=0.1, help="vCPUs per host core."),
    memory_overcommit: float = typer.Option(1.0, min=0.1, help="Guest RAM per host RAM."),
    tls_cert: Path | None = typer.Option(None, help="TLS certificate (PEM) for --listen."),
    tls_key: Path | None = typer.Option(None, help="TLS private key (PEM) for --listen."),
    tls_self_signed: bool = typer.Option(False, "--tls-self-signed",
                                         help="Make (once) and use a self-signed certificate."),
    rate: float = typer.Option(20.0, min=0.1, help="API requests per second per token."),
    burst: float = typer.Option(100.0, min=1, help="API requests at once per token."),
    metrics_interval: float = typer.Option(5.0, min=0.5, max=3600,
                                           help="Seconds between metrics samples."),
    sandbox: bool = typer.Option(True, "--sandbox/--no-sandbox",
                                 help="As root, run QEMU unprivileged under seccomp."),
) -> None:
    """Run the daemon in the foreground (API on $KASOU_HOME/kasou.sock)."""
    from kasou.api.server import ServeOptions, parse_listen, serve
    from kasou.daemon import daemon_running

    layout = Layout.default()
    if daemon_running(layout):
        fail(f"a kasou daemon already answers on {layout.socket}")
    try:
        opts = ServeOptions(listen_tcp=parse_listen(listen) if listen else None,
                            cpu_overcommit=cpu_overcommit, memory_overcommit=memory_overcommit,
                            tls_cert=tls_cert, tls_key=tls_key,
                            tls_self_signed=tls_self_signed, rate=rate, burst=burst,
                            metrics_interval=metrics_interval, sandbox=sandbox)
    except KasouError as e:
        fail(e.message)
    try:
        serve(layout, opts)
    except KasouError as e:
        fail(e.message)


@app.command("start")
def daemon_start(listen: str | None = typer.Option(None, help="Also listen on tcp:HOST:PORT.")
                 ) -> None:
    """Start the daemon in the background and wait until it answers."""
    from kasou.daemon import start_background

    try:
        pid = start_background(Layout.default(), listen)
    except KasouError as e:
        fail(e.message)
    sys.stdout.write(f"kasou daemon running (pid {pid}), socket {Layout.default().socket}\n")


@app.command("stop")
def daemon_stop() -> None:
    """Stop the daemon. Running VMs keep running."""
    from kasou.daemon import stop_background

    stopped = stop_background(Layout.default())
    sys.stdout.write("kasou daemon stopped\n" if stopped else "kasou daemon was not running\n")


@app.command("status")
def daemon_status() -> None:
    """Say whether the daemon answers."""
    from kasou.daemon import daemon_running

    layout = Layout.default()
    if daemon_running(layout):
        sys.stdout.write(f"running, socket {layout.socket}\n")
    else:
        fail("not running", code=3)
