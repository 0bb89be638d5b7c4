"""`kasou vm console`: the serial console in this terminal, Ctrl-] to detach."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import tty
from collections.abc import Iterator

DETACH = b"\x1d"   # Ctrl-], as telnet and virsh console


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(socket_path: str, stdin: int | None = None, stdout: int | None = None) -> None:
    """Copy bytes both ways until the user detaches, stdin closes or the VM goes away."""
    fd_in = sys.stdin.fileno() if stdin is None else stdin
    fd_out = sys.stdout.fileno() if stdout is None else stdout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock, _raw(fd_in):
        sock.connect(socket_path)
        _pump(sock, fd_in, fd_out)


QUIET_AFTER_EOF = 1.5   # seconds of silence that end a scripted (piped) session


def _pump(sock: socket.socket, fd_in: int, fd_out: int) -> None:
    stdin_open = True
    while True:
        watch: list[socket.socket | int] = [sock, fd_in] if stdin_open else [sock]
        readable, _, _ = select.select(watch, [], [], None if stdin_open else QUIET_AFTER_EOF)
        if not readable:
            return
        if sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            os.write(fd_out, data)
        if fd_in in readable:
            data = os.read(fd_in, 1024)
            if not data:
                # Piped input is done; stay for the guest's answer until it goes quiet.
                stdin_open = False
                continue
            if DETACH in data:
                sock.sendall(data.split(DETACH, 1)[0])
                return
            sock.sendall(data)
