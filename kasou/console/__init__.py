"""Graphical consoles: VNC on a Unix socket per VM, reached from a browser through the
API's WebSocket proxy, authorized by short-lived single-VM console tokens."""

from kasou.console.service import ConsoleGrant, ConsoleService
from kasou.console.tokens import ConsoleTokens

__all__ = ["ConsoleGrant", "ConsoleService", "ConsoleTokens"]
