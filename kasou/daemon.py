"""Starting and stopping the daemon in the background (`kasou daemon start|stop`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from kasou.engine.process import is_alive, read_pidfile
from kasou.errors import EngineError
from kasou.paths import Layout


def daemon_running(layout: Layout) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(layout.socket))
        except OSError:
            return False
    return True


def start_background(layout: Layout, listen: str | None = None, timeout: float = 30.0) -> int:
    if daemon_running(layout):
        pid = read_pidfile(layout.daemon_pid)
        return pid or 0
    layout.ensure()
    argv = [sys.executable, "-m", "kasou", "serve"] + (["--listen", listen] if listen else [])
    with open(layout.daemon_log, "ab") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, env=os.environ.copy())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError(f"the daemon exited at start (code {proc.returncode}); "
                              f"see {layout.daemon_log}")
        if daemon_running(layout):
            return proc.pid
        time.sleep(0.05)
    proc.kill()
    raise EngineError(f"the daemon did not answer within {timeout:.0f}s; see {layout.daemon_log}")


def stop_background(layout: Layout, timeout: float = 15.0) -> bool:
    pid = read_pidfile(layout.daemon_pid)
    if pid is None or not is_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True
