"""Desktop bits of the CLI: browser console URLs (`kasou vm console --web`, desktop pools)."""

from __future__ import annotations

import os
import sys
from urllib.parse import quote

from kasou.cli.client import Client
from kasou.cli.common import call

DISPLAY_HELP = "A screen: VGA + VNC on a Unix socket, seen in a browser (machine pc)."
WEB_HELP = "Print a browser URL for the VM's screen (valid about a minute) instead of attaching."
BASE_HELP = "The daemon's address as the browser reaches it (default: KASOU_URL)."


def console_url(grant: dict[str, object], base: str) -> str:
    """The dashboard's console page for a grant; the token rides in the fragment, which
    browsers never send to servers, so it stays out of logs and proxies."""
    name = quote(str(grant["vm"]), safe="")
    return f"{base.rstrip('/')}/ui/console.html?vm={name}#token={grant['token']}"


def web_base(base: str | None) -> str:
    """Where browsers reach the daemon: --base, else KASOU_URL, else a placeholder (with a
    note: a browser cannot use the Unix socket)."""
    base = base or os.environ.get("KASOU_URL")
    if not base:
        sys.stderr.write("note: the daemon is reached over its Unix socket here; start it "
                         "with --listen tcp:HOST:PORT and pass --base http(s)://HOST:PORT\n")
        base = "http://HOST:PORT"
    return base


def print_web_console(name: str, base: str | None) -> None:
    grant = call(Client().post, f"/vms/{name}/console-token")
    sys.stdout.write(console_url(grant, web_base(base)) + "\n")
