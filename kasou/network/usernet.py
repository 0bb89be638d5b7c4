"""User-mode NAT (QEMU's slirp): needs no root, gives the guest outbound access, and
reaches in only through port forwards that bind on the host (127.0.0.1 by default)."""

from __future__ import annotations

import socket

from kasou.errors import Conflict
from kasou.network.spec import Forward


def port_free(fwd: Forward) -> bool:
    """Would QEMU be able to bind this forward now? slirp binds with SO_REUSEADDR, so a
    port in TIME_WAIT counts as free, exactly as it will for QEMU."""
    kind = socket.SOCK_STREAM if fwd.proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((fwd.host_addr, fwd.host_port))
        except OSError:
            return False
    return True


def check_free(forwards: list[Forward], field: str = "forwards") -> None:
    for fwd in forwards:
        if not port_free(fwd):
            raise Conflict(f"{field}: host port {fwd.host_addr}:{fwd.host_port}/{fwd.proto} "
                           f"is already taken (forward {fwd})", field=field)
