"""QEMU processes: launch daemonized, find, signal. One process per VM.

QEMU's own -daemonize does the double fork and setsid, so a VM is not in the daemon's
process group and outlives it; errors before it daemonizes come back on stderr with a
non-zero exit, which is how a failed launch is told apart from a running VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from kasou.errors import LaunchFailure


async def launch(argv: list[str], pidfile: Path, timeout: float = 30.0) -> int:
    """Run QEMU with -daemonize; return the daemon's pid once it is up."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )
    except OSError as e:
        raise LaunchFailure(f"cannot run {argv[0]}: {e.strerror}", argv=argv) from e
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        raise LaunchFailure(f"QEMU did not finish starting in {timeout:.0f}s", argv=argv) from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise LaunchFailure("QEMU failed to start", returncode=proc.returncode, argv=argv,
                            output=_last_lines(text))
    pid = read_pidfile(pidfile)
    if pid is None:
        raise LaunchFailure("QEMU started but wrote no pidfile", argv=argv, output=text)
    return pid


def _last_lines(text: str, n: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/pid/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def is_alive(pid: int, start_time: int | None = None) -> bool:
    """True when `pid` runs and (if given) is the same process that started at start_time."""
    now = proc_start_time(pid)
    if now is None:
        return False
    if _is_zombie(pid):
        return False
    return start_time is None or now == start_time


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def kill(pid: int, start_time: int | None, sig: int = signal.SIGKILL) -> None:
    if is_alive(pid, start_time):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True
