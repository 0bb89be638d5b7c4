"""Sandboxed QEMU: each VM's QEMU runs as a user id of its own, under QEMU's seccomp
sandbox, holding open only the files and sockets kasou handed it.

QEMU 7.2 cannot drop privileges itself under the full sandbox: `-runas` calls setuid after
the seccomp filter is in place, which `elevateprivileges=deny` kills (SIGSYS), and
`-daemonize` forks, which `spawn=deny` kills. So kasou does what libvirt does: it starts
QEMU already unprivileged (no supplementary groups, its own session), in the foreground,
and waits for the QMP greeting to know it is up.

An unprivileged QEMU could not open the VM's files by path (the run dir is root's, mode
0700, and user disks may sit in directories only root can search), so kasou opens them as
root and passes descriptors: disks, firmware and logs through `-add-fd` fd sets
(`/dev/fdset/N`), listening sockets as `fd=N`, the kernel and initrd as `/proc/self/fd/N`
(QEMU 7.2's -kernel takes only a path). The QEMU process therefore holds exactly its own
files; a path to anything else (another VM's disk or run dir) is refused by the kernel.
A kernel or initrd that others may not read gets a POSIX ACL for the VM's uid while it
runs (QEMU reopens it through /proc, which checks the file's own permissions).

What other areas must know: QEMU cannot open new host paths at run time (hot-plug a disk
by passing a descriptor: `pass_file`), cannot run helpers (`exec:` migration is denied:
use `fd:` migration), and cannot bind sockets outside what its command line named.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pwd
import socket
import stat
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel
from qemu.qmp import QMPClient

from kasou.engine.plan import LaunchPlan
from kasou.engine.qmp import _execute
from kasou.errors import EngineError, LaunchFailure
from kasou.store.base import VMRecord

log = logging.getLogger(__name__)

__all__ = [
    "SECCOMP",
    "SandboxLauncher",
    "SandboxState",
    "allocate_uid",
    "join_opts",
    "pass_file",
    "process_identity",
    "sandbox_argv",
    "split_opts",
]

SECCOMP = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
# Per-VM user ids: no passwd entry is needed since kasou sets the ids itself. Above
# systemd-nspawn's container range (up to 0x6FFF0000) and below 2^31, which some tools
# still mishandle; a uid that has a passwd entry or runs a process is skipped.
UID_BASE = 1_900_000_000
UID_RANGE = 1_000_000
LOCK_FILE = Path("/run/kasou/sandbox.lock")
STATE_FILE = "sandbox.json"
QEMU_LOG = "qemu.log"
STATE_VERSION = 1
TUNSETIFF = 0x400454CA                           # _IOW('T', 202, int)
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


# --- QEMU option strings ----------------------------------------------------------------------

def split_opts(text: str) -> list[tuple[str | None, str]]:
    """'socket,id=a,path=/x,,y' -> [(None, 'socket'), ('id', 'a'), ('path', '/x,y')].
    A doubled comma is a literal comma (QEMU's escape)."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    out: list[tuple[str | None, str]] = []
    for part in parts:
        key, eq, value = part.partition("=")
        out.append((key, value) if eq else (None, part))
    return out


def join_opts(items: list[tuple[str | None, str]]) -> str:
    return ",".join(v.replace(",", ",,") if k is None else f"{k}={v.replace(',', ',,')}"
                    for k, v in items)


def _get(items: list[tuple[str | None, str]], key: str) -> str | None:
    for k, v in items:
        if k == key:
            return v
    return None


def _set(items: list[tuple[str | None, str]], key: str, value: str | None,
         new_key: str | None = None) -> list[tuple[str | None, str]]:
    """Replace `key` (renamed to new_key if given); value None drops it."""
    out: list[tuple[str | None, str]] = []
    for k, v in items:
        if k != key:
            out.append((k, v))
        elif value is not None:
            out.append((new_key or key, value))
    return out


def _on(value: str | None) -> bool:
    return value in ("on", "true", "yes", "y")


# --- rewriting a command line for the sandbox -------------------------------------------------

class Broker(Protocol):
    """Opens host files as root and names them for QEMU."""

    def fdset(self, path: str, *, writable: bool, log: bool = False) -> str: ...

    def kernel_file(self, path: str) -> str: ...

    def listen_socket(self, path: str) -> str: ...

    def tap(self, ifname: str) -> str: ...

    def device(self, path: str) -> str: ...


def _is_plain_path(value: str) -> bool:
    return value.startswith("/") and not value.startswith(("/dev/fdset/", "/proc/self/fd/"))


def _blockdev(value: str, broker: Broker) -> str:
    if value.lstrip().startswith("{"):
        data = json.loads(value)
        if data.get("driver") in ("file", "host_device", "host_cdrom") and \
                _is_plain_path(str(data.get("filename", ""))):
            data["filename"] = broker.fdset(data["filename"],
                                            writable=not data.get("read-only", False))
        return json.dumps(data, separators=(",", ":"))
    items = split_opts(value)
    filename = _get(items, "filename")
    if _get(items, "driver") in ("file", "host_device", "host_cdrom") and filename and \
            _is_plain_path(filename):
        ref = broker.fdset(filename, writable=not _on(_get(items, "read-only")))
        items = _set(items, "filename", ref)
    return join_opts(items)


def _drive(value: str, broker: Broker) -> str:
    items = split_opts(value)
    path = _get(items, "file")
    if path and _is_plain_path(path):
        items = _set(items, "file", broker.fdset(path, writable=not _on(_get(items, "readonly"))))
    return join_opts(items)


def _chardev(value: str, broker: Broker) -> str:
    items = split_opts(value)
    backend = items[0][1] if items and items[0][0] is None else ""
    path = _get(items, "path")
    if backend == "socket" and path and _on(_get(items, "server")):
        items = _set(items, "path", broker.listen_socket(path), new_key="fd")
    elif backend == "file" and path and _is_plain_path(path):
        items = _set(items, "path", broker.fdset(path, writable=True, log=True))
    logfile = _get(items, "logfile")
    if logfile and _is_plain_path(logfile):
        items = _set(items, "logfile", broker.fdset(logfile, writable=True, log=True))
    return join_opts(items)


def _netdev(value: str, broker: Broker) -> str:
    """A TAP kasou made is attached by root and handed over (an unprivileged QEMU may not
    attach a TAP it does not own); QEMU refuses ifname/script/downscript next to fd=."""
    items = split_opts(value)
    ifname = _get(items, "ifname")
    if not items or items[0] != (None, "tap") or not ifname or _get(items, "fd"):
        return value
    items = _set(items, "ifname", broker.tap(ifname), new_key="fd")
    items = _set(_set(items, "script", None), "downscript", None)
    if _on(_get(items, "vhost")) and not _get(items, "vhostfd"):
        items.append(("vhostfd", broker.device("/dev/vhost-net")))
    return join_opts(items)


_REWRITE: dict[str, Callable[[str, Broker], str]] = {
    "-blockdev": _blockdev,
    "-netdev": _netdev,
    "-drive": _drive,
    "-chardev": _chardev,
    "-kernel": lambda v, b: b.kernel_file(v) if _is_plain_path(v) else v,
    "-initrd": lambda v, b: b.kernel_file(v) if _is_plain_path(v) else v,
}


def sandbox_argv(argv: list[str], broker: Broker) -> list[str]:
    """The command line as the sandboxed QEMU runs it: files and sockets become descriptors
    from the broker, no -daemonize/-pidfile (kasou does both), and the seccomp sandbox."""
    out = [argv[0]]
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "-daemonize":
            i += 1
            continue
        if arg == "-pidfile":
            i += 2
            continue
        if arg == "-incoming" and i + 1 < len(argv) and argv[i + 1].startswith("exec:"):
            raise LaunchFailure("-incoming exec: runs a helper program, which the QEMU "
                                "sandbox forbids (spawn=deny); pass an fd instead",
                                argv=argv)
        if arg in _REWRITE and i + 1 < len(argv):
            out += [arg, _REWRITE[arg](argv[i + 1], broker)]
            i += 2
            continue
        out.append(arg)
        i += 1
    return [*out, "-sandbox", SECCOMP]


# --- the real broker: descriptors opened as root ---------------------------------------------

@dataclass
class FdBroker:
    """Opens each file once per access mode; `add_fd_args()` names the fd sets for QEMU."""

    uid: int
    fds: list[int] = field(default_factory=list)
    sockets: list[socket.socket] = field(default_factory=list)
    grants: list[str] = field(default_factory=list)
    _sets: list[tuple[int, int, str]] = field(default_factory=list)   # (set id, fd, path)
    _next_set: int = 1

    def _open(self, path: str, flags: int, mode: int = 0o600) -> int:
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, mode)
        except OSError as e:
            raise LaunchFailure(f"cannot open {path} for the VM: {e.strerror}") from e
        self.fds.append(fd)
        return fd

    def fdset(self, path: str, *, writable: bool, log: bool = False) -> str:
        set_id = self._next_set
        self._next_set += 1
        if log:
            # Logs are appended to; QEMU matches fd-set members by access mode only.
            modes = [os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW]
        else:
            # A writable image also gets a read-only member: QEMU reopens read-only for
            # some block jobs and then looks for an O_RDONLY descriptor in the set.
            modes = [os.O_RDONLY] + ([os.O_RDWR] if writable else [])
        for flags in modes:
            self._sets.append((set_id, self._open(path, flags), path))
        return f"/dev/fdset/{set_id}"

    def kernel_file(self, path: str) -> str:
        fd = self._open(path, os.O_RDONLY)
        self._grant_read(path, os.fstat(fd))
        return f"/proc/self/fd/{fd}"

    def _grant_read(self, path: str, st: os.stat_result) -> None:
        if st.st_mode & stat.S_IROTH or st.st_uid == self.uid:
            return
        _setfacl(["-m", f"u:{self.uid}:r", path])
        self.grants.append(path)

    def listen_socket(self, path: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)      # a stale socket of an earlier run; never another file
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sockets.append(sock)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:
            raise LaunchFailure(f"cannot bind {path}: {e.strerror}") from e
        finally:
            os.umask(old)
        sock.listen(4)
        return str(sock.fileno())

    def tap(self, ifname: str) -> str:
        fd = self._open("/dev/net/tun", os.O_RDWR)
        request = struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as e:
            raise LaunchFailure(f"cannot attach TAP {ifname}: {e.strerror}") from e
        return str(fd)

    def device(self, path: str) -> str:
        return str(self._open(path, os.O_RDWR))

    def pass_fds(self) -> tuple[int, ...]:
        return (*self.fds, *(s.fileno() for s in self.sockets))

    def add_fd_args(self) -> list[str]:
        args: list[str] = []
        for set_id, fd, path in self._sets:
            opaque = os.path.basename(path).replace(",", "_")
            args += ["-add-fd", f"fd={fd},set={set_id},opaque={opaque}"]
        return args

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for sock in self.sockets:
            sock.close()
        self.fds.clear()
        self.sockets.clear()


def _setfacl(args: list[str]) -> None:
    try:
        subprocess.run(["setfacl", *args], capture_output=True, text=True, timeout=10,
                       check=True)
    except FileNotFoundError:
        raise LaunchFailure("a kernel or initrd others may not read needs setfacl (Debian "
                            "package acl) to be shared with the sandboxed QEMU") from None
    except subprocess.CalledProcessError as e:
        raise LaunchFailure(f"setfacl {' '.join(args)} failed: {e.stderr.strip()}") from e


def revoke_grants(uid: int, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(LaunchFailure):
            _setfacl(["-x", f"u:{uid}", path])


# --- user ids ---------------------------------------------------------------------------------

def _uids_in_use() -> set[int]:
    used: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                used.add(entry.stat(follow_symlinks=False).st_uid)
    return used


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def allocate_uid(vm_id: str, in_use: set[int] | None = None) -> int:
    """A uid no process on the host runs as, starting from one derived from the VM id (so
    a VM usually gets the same one again). Call with the host lock held until QEMU runs."""
    used = _uids_in_use() if in_use is None else in_use
    start = zlib.crc32(vm_id.encode()) % UID_RANGE
    for step in range(UID_RANGE):
        uid = UID_BASE + (start + step) % UID_RANGE
        if uid not in used and not _has_passwd_entry(uid):
            return uid
    raise EngineError("no free sandbox user id left")


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Serialises uid choice between kasou daemons on one host (several data dirs)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- what a running sandbox looks like ---------------------------------------------------------

class SandboxState(BaseModel):
    """Kept in the VM's run dir (root's, 0600) while QEMU runs."""

    version: int = STATE_VERSION
    uid: int
    gid: int
    seccomp: str
    argv: list[str]          # the command line QEMU really got
    grants: list[str] = []   # files given an ACL entry for this uid, revoked at stop


def load_state(run_dir: Path) -> SandboxState | None:
    try:
        return SandboxState.model_validate_json((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def process_identity(pid: int) -> dict[str, Any]:
    """Uid, gid, groups and seccomp mode of a live process, from /proc/<pid>/status."""
    out: dict[str, Any] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields = value.split()
        if key == "Uid" and fields:
            out["uid"] = int(fields[0])
        elif key == "Gid" and fields:
            out["gid"] = int(fields[0])
        elif key == "Groups":
            out["groups"] = [int(g) for g in fields]
        elif key == "Seccomp" and fields:
            out["seccomp"] = {"0": "off", "1": "strict", "2": "filter"}.get(fields[0],
                                                                              fields[0])
        elif key == "NoNewPrivs" and fields:
            out["no_new_privs"] = fields[0] == "1"
    return out


# --- the launcher -----------------------------------------------------------------------------

class SandboxLauncher:
    """Starts QEMU unprivileged and sandboxed (plugs into VMService as its launcher)."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout

    async def launch(self, rec: VMRecord, plan: LaunchPlan, argv: list[str]) -> int:
        run_dir = Path(plan.paths.pidfile).parent
        with host_lock():
            uid = allocate_uid(rec.id)
            broker = FdBroker(uid=uid)
            try:
                real = sandbox_argv(argv, broker)
                real = [real[0], *broker.add_fd_args(), *real[1:]]
                proc = self._spawn(real, broker, uid, run_dir)
            except BaseException:
                revoke_grants(uid, broker.grants)
                raise
            finally:
                broker.close()
        state = SandboxState(uid=uid, gid=uid, seccomp=SECCOMP, argv=real, grants=broker.grants)
        _write_private(run_dir / STATE_FILE, state.model_dump_json(indent=2))
        _write_private(Path(plan.paths.pidfile), f"{proc.pid}\n")
        try:
            await self._wait_ready(proc, plan.paths.qmp, real, run_dir)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            revoke_grants(uid, broker.grants)
            raise
        return proc.pid

    def _spawn(self, argv: list[str], broker: FdBroker, uid: int,
               run_dir: Path) -> subprocess.Popen[bytes]:
        out = os.open(run_dir / QEMU_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                      | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                pass_fds=broker.pass_fds(), user=uid, group=uid, extra_groups=[],
                start_new_session=True, umask=0o077, cwd="/")
        except OSError as e:
            raise LaunchFailure(f"cannot run {argv[0]}: {e.strerror}", argv=argv) from e
        finally:
            os.close(out)
        # QEMU is our child (it cannot fork itself away under spawn=deny): reap it when it
        # exits so no zombie lingers. If the daemon goes first, init inherits and reaps it.
        threading.Thread(target=proc.wait, name=f"reap-qemu-{proc.pid}", daemon=True).start()
        return proc

    async def _wait_ready(self, proc: subprocess.Popen[bytes], qmp_path: str,
                          argv: list[str], run_dir: Path) -> None:
        """Up means QEMU's main loop runs: it answers a QMP connection with its greeting.
        A QEMU that exits first failed; its own words are in qemu.log."""
        deadline = time.monotonic() + self.timeout
        reader, writer = await asyncio.open_unix_connection(qmp_path)
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                try:
                    line = await asyncio.wait_for(reader.readline(), 0.1)
                except TimeoutError:
                    continue
                if b'"QMP"' in line:
                    return
                if not line:
                    await asyncio.sleep(0.1)   # closed: QEMU is exiting; collect its status
                    break
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        output = _tail(run_dir / QEMU_LOG)
        if proc.poll() is None:
            raise LaunchFailure(f"QEMU did not finish starting in {self.timeout:.0f}s",
                                argv=argv, output=output)
        raise LaunchFailure("QEMU failed to start", returncode=proc.returncode, argv=argv,
                            output=output)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


# --- handing a file to a running sandboxed QEMU --------------------------------------------------

async def pass_file(qmp: QMPClient, path: str, *, writable: bool) -> str:
    """Open `path` as root and give the descriptor to QEMU (QMP add-fd, SCM_RIGHTS); returns
    the '/dev/fdset/N' name to use in blockdev-add. For hot-plugging into a sandboxed VM,
    which cannot open host paths itself."""
    set_id: int | None = None
    # As at launch, a writable image's set also holds a read-only member for reopens.
    for flags in [os.O_RDONLY] + ([os.O_RDWR] if writable else []):
        fd = os.open(path, flags | os.O_CLOEXEC)
        try:
            qmp.send_fd_scm(fd)
            args: dict[str, Any] = {"opaque": os.path.basename(path)}
            if set_id is not None:
                args["fdset-id"] = set_id
            reply = await _execute(qmp, "add-fd", args)
        finally:
            os.close(fd)
        set_id = int(reply["fdset-id"])
    return f"/dev/fdset/{set_id}"
